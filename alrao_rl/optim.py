"""``AlraoSGD`` and ``AlraoAdam``: torch optimizers with one learning rate per feature.

For a parameter ``p`` whose feature ``i`` has the Alrao rate ``eta_i`` (sampled once, see
:mod:`alrao_rl.rates`; the output heads get their deterministic log-spaced rates), the update is
the base optimizer's with ``lr`` replaced by ``lr * eta_i``:

* SGD (as ``torch.optim.SGD``):  ``g <- g + wd p``;  ``b <- mu b + (1 - dampening) g``
  (``b = g`` at the first step);  ``d = g + mu b`` (Nesterov) or ``d = b``;
  ``p <- p - lr * eta_i * d``.
* Adam (as ``torch.optim.Adam``): ``g <- g + wd p``;  ``m <- beta1 m + (1 - beta1) g``;
  ``v <- beta2 v + (1 - beta2) g^2``;
  ``p <- p - lr * eta_i * (m / (1 - beta1^t)) / (sqrt(v / (1 - beta2^t)) + eps)``.

``lr`` (default 1.0) is a global multiplier on every Alrao rate: torch LR schedulers and
frameworks that overwrite ``group["lr"]`` (Stable-Baselines3 does, every update) scale all rates
at once. The rates live in ``self.state[p]["alrao_rate"]`` as compact tensors that broadcast
against ``p``, so ``state_dict()`` / ``load_state_dict()`` carry them.

**Runaway units.** With ``eta_max = 10`` some features diverge. After every step the optimizer
checks (one vectorized 2-norm per parameter) that every weight is finite and, if ``max_weight``
is set, that no weight of the body exceeds ``max_weight`` in absolute value (output heads are only
checked for finiteness: they must be free to reach the scale of the targets). A feature that
fails is reset to zero and frozen: its parameters, its optimizer buffers and its rate are set to
0, so it outputs a constant and never moves again, and its inf/NaN cannot spread to the rest of
the network through the next forward pass (Appendix G of the paper: frozen features do not hurt
training). The same happens to an output head that :meth:`alrao_rl.AlraoModel.loss` found dead
(its likelihood overflowed: see :class:`alrao_rl.AlraoHeads`). Frozen features are counted in
``optimizer.frozen_units()``.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from .heads import AlraoHeads
from .rates import check_interval, sample_unit_rates

__all__ = ["AlraoAdam", "AlraoSGD"]

_RATE = "alrao_rate"
_LARGEST = sys.float_info.max  # the bound of a group checked for finiteness only


class _AlraoOptimizer(torch.optim.Optimizer):
    """Builds per-feature rates for every parameter of a module and guards runaway features."""

    def __init__(
        self,
        model: nn.Module,
        eta_min: float,
        eta_max: float,
        seed: int,
        defaults: dict[str, Any],
        max_weight: float | None,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(
                f"model must be an nn.Module (Alrao needs its layers to find features), got "
                f"{type(model).__name__}"
            )
        check_interval(eta_min, eta_max)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed must be an int, got {type(seed).__name__} ({seed!r})")
        if max_weight is not None and not (max_weight > 0):
            raise ValueError(f"max_weight must be > 0 or None, got {max_weight}")
        generator = torch.Generator().manual_seed(seed)
        rates = sample_unit_rates(model, eta_min, eta_max, generator)
        named = dict(model.named_parameters())
        if not rates:
            raise ValueError("model has no trainable parameters")
        # Output heads are guarded against non-finite weights only: their weights must be free to
        # reach the scale of the targets; max_weight protects the body's units.
        head_ids = {id(p) for m in model.modules() if isinstance(m, AlraoHeads) for p in m.parameters()}
        body = [named[name] for name in rates if id(named[name]) not in head_ids]
        heads = [named[name] for name in rates if id(named[name]) in head_ids]
        groups = [{"params": body}] if body else []
        if heads:
            groups.append({"params": heads, "max_weight": None})
        defaults = {**defaults, "eta_min": eta_min, "eta_max": eta_max, "max_weight": max_weight}
        super().__init__(groups, defaults)
        self._heads = [m for m in model.modules() if isinstance(m, AlraoHeads)]
        self._head_of = {id(p): m for m in self._heads for p in m.parameters()}
        for name, rate in rates.items():
            self.state[named[name]][_RATE] = rate.to(named[name].dtype).clone()
        self._flat = _FlatParameters.build(self.param_groups)
        self._rate_table: tuple[Any, dict[int, Tensor]] | None = None

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As ``torch.optim.Optimizer.zero_grad``, without its per-call profiling machinery (which costs
        more than a small network's backward): every gradient to None (or zeroed in place)."""
        if not set_to_none:
            super().zero_grad(set_to_none=False)
            return
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None

    _BUFFERS: tuple[str, ...] = ()
    """The per-parameter state buffers a frozen feature's entries are zeroed in."""

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:
        """One step of the base rule with per-feature rates on every parameter with a gradient, then
        the runaway-feature guard on every parameter (also after a batch that trained nothing: a
        weight gone non-finite upstream is found and frozen)."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        updates = []
        for group in self.param_groups:
            params, grads = self._grads(group)
            if params:
                updates.append((group, params, grads))
        if updates:
            self._update(updates)
        self.guard([(group, group["params"]) for group in self.param_groups])
        return loss

    def _update(self, updates: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]) -> None:
        """Apply one step of the base rule to ``(group, params, grads)`` triples (under no_grad)."""
        raise NotImplementedError

    def frozen_units(self) -> int:
        """How many rate entries (features) the guard has frozen so far."""
        return sum(int((s[_RATE] == 0).sum()) for s in self.state.values() if _RATE in s)

    def _rates(self, params: list[Tensor]) -> list[Tensor]:
        """The rates of ``params`` (by identity: hashing a tensor costs a Python call; the table is rebuilt
        when ``load_state_dict`` replaces the state)."""
        table = self._rate_table
        if table is None or table[0] is not self.state:
            table = self._rate_table = (self.state, {id(p): s[_RATE] for p, s in self.state.items() if _RATE in s})
        rates = table[1]
        return [rates[id(p)] for p in params]

    def guard(self, updated: list[tuple[dict[str, Any], list[Tensor]]]) -> None:
        """Zero and freeze every feature whose weights are non-finite or exceed its group's bound,
        and every output head that :meth:`alrao_rl.AlraoModel.loss` found dead (called after each
        update by ``step`` and :class:`alrao_rl.AlraoStep`, under ``torch.no_grad()``).

        :param updated: the ``(group, params)`` pairs just updated.
        """
        buffer_keys = self._BUFFERS
        flat = self._flat
        if flat is None or not flat.clear():  # (the common case, clear: one reduction over every weight)
            self._check_weights(updated)
        for heads in self._heads:
            dead = heads.take_dead()
            if dead is not None:
                for p in heads.parameters():
                    if p in self.state:
                        self._freeze(p, dead.view(*dead.shape, *[1] * (p.dim() - dead.dim())), buffer_keys)

    def _check_weights(self, updated: list[tuple[dict[str, Any], list[Tensor]]]) -> None:
        """The guard's exact check of the parameters of ``updated``, one by one."""
        buffer_keys = self._BUFFERS
        params: list[Tensor] = []
        limits: list[float] = []
        for group, ps in updated:
            params += ps
            bound = group["max_weight"]
            limits += [_LARGEST if bound is None else bound] * len(ps)
        # One 2-norm per parameter (much cheaper than the max-norm on CPU). It is finite iff every
        # weight is, unless it overflows, and it bounds the largest weight: "norm <= limit" clears
        # a parameter at once. The others (trained weights often have a 2-norm above max_weight)
        # are checked on their largest weight, and only a real offender on every weight.
        norms = torch.stack(torch._foreach_norm(params)).tolist()
        suspects = [(p, limit) for p, norm, limit in zip(params, norms, limits, strict=True) if not norm <= limit]
        if suspects:
            largest = torch.stack(torch._foreach_norm([p for p, _ in suspects], math.inf)).tolist()
            for (p, limit), top in zip(suspects, largest, strict=True):
                if not top <= limit:  # also true for NaN
                    bad = ~torch.isfinite(p) if limit == _LARGEST else ~(p.abs() <= limit)
                    rate = self.state[p][_RATE]
                    bad_units = bad.sum_to_size(rate.shape) > 0 if bad.shape != rate.shape else bad
                    heads = self._head_of.get(id(p))
                    if heads is None:
                        self._freeze(p, bad_units, buffer_keys)
                    else:  # a head with a non-finite weight is dead: weight and bias frozen together
                        heads.mark_dead(bad_units.reshape(heads.dead.shape))

    def _freeze(self, p: Tensor, bad_units: Tensor, buffer_keys: tuple[str, ...]) -> None:
        """Zero the features ``bad_units`` (bool, the rate's shape) of ``p``, their buffers and rates."""
        state = self.state[p]
        rate = state[_RATE]
        if not bool(bad_units.any()):
            return
        bad_units = bad_units | (rate == 0)
        mask = bad_units.expand_as(p)
        p.masked_fill_(mask, 0.0)
        rate.masked_fill_(bad_units, 0.0)
        for key in buffer_keys:
            if key in state:
                state[key].masked_fill_(mask, 0.0)

    def _grads(self, group: dict[str, Any]) -> tuple[list[Tensor], list[Tensor]]:
        params, grads = [], []
        for p in group["params"]:
            grad = p.grad
            if grad is not None:
                if grad.is_sparse:
                    raise RuntimeError("Alrao optimizers do not support sparse gradients")
                params.append(p)
                grads.append(grad)
        return params, grads


class _FlatParameters:
    """Every parameter of an optimizer as a view of one flat buffer, group after group, so that the
    guard clears them all at once: ``||w||_2 <= min_g bound_g`` over the whole buffer (one reduction)
    bounds every weight and is finite iff every weight is; failing that, each group's slice is checked
    against its own bound (``aminmax`` for a bounded group, the 2-norm's finiteness for the heads), and
    only a real offender goes through the guard's exact per-parameter path.

    The parameters keep their identity (``p.data`` becomes a view of the buffer); if any is moved
    afterwards (``model.to(...)``, a replaced ``.data``) the buffer no longer holds it and :meth:`clear`
    defers to the exact path.
    """

    def __init__(self, flat: Tensor, params: list[Tensor], slices: list[tuple[int, int, float]]) -> None:
        self.flat = flat
        self.params = params
        self.pointers = [p.data_ptr() for p in params]
        self.slices = slices
        self.bound = min(bound for _, _, bound in slices)

    @staticmethod
    def build(groups: list[dict[str, Any]]) -> _FlatParameters | None:
        """Re-home the parameters of ``groups`` into one buffer (None when they differ in dtype or device,
        or one is sparse)."""
        params = [p for g in groups for p in g["params"]]
        if not params or any(p.is_sparse or p.dtype != params[0].dtype or p.device != params[0].device
                              for p in params):
            return None
        flat = torch.empty(sum(p.numel() for p in params), dtype=params[0].dtype, device=params[0].device)
        slices, start = [], 0
        with torch.no_grad():
            for g in groups:
                first = start
                for p in g["params"]:
                    view = flat[start : start + p.numel()].view_as(p)
                    view.copy_(p)
                    p.data = view
                    start += p.numel()
                bound = g["max_weight"]
                slices.append((first, start, _LARGEST if bound is None else float(bound)))
        return _FlatParameters(flat, params, slices)

    def clear(self) -> bool:
        """Whether every weight is finite and within its group's bound (False: check them one by one)."""
        if [p.data_ptr() for p in self.params] != self.pointers:
            return False
        if torch.linalg.vector_norm(self.flat).item() <= self.bound:
            return True
        for start, end, bound in self.slices:
            part = self.flat[start:end]
            if bound == _LARGEST:
                if not math.isfinite(torch.linalg.vector_norm(part).item()):
                    return False
            else:
                low, high = torch.aminmax(part)
                if not max(-low.item(), high.item()) <= bound:  # (NaN fails)
                    return False
        return True


class AlraoSGD(_AlraoOptimizer):
    """SGD with Alrao per-feature learning rates (the paper's optimizer).

    :param model: the network: an :class:`alrao_rl.AlraoModel` (body gets random per-unit rates,
        heads their log-spaced rates) or any ``nn.Module`` (per-unit rates only).
    :param eta_min: lower end of the log-uniform interval (the paper: 1e-5).
    :param eta_max: upper end (the paper: 10).
    :param seed: seeds the ``torch.Generator`` the rates are drawn from.
    :param lr: global multiplier on every rate (for schedulers), default 1.0.
    :param momentum: as ``torch.optim.SGD``.
    :param dampening: as ``torch.optim.SGD``.
    :param weight_decay: L2 penalty, as ``torch.optim.SGD``.
    :param nesterov: as ``torch.optim.SGD``.
    :param max_weight: also freeze a body feature once any of its weights exceeds this (None: only
        non-finite weights are frozen).

    >>> opt = AlraoSGD(model, eta_min=1e-5, eta_max=10.0, seed=0)
    """

    def __init__(
        self,
        model: nn.Module,
        eta_min: float = 1e-5,
        eta_max: float = 10.0,
        seed: int = 0,
        *,
        lr: float = 1.0,
        momentum: float = 0.0,
        dampening: float = 0.0,
        weight_decay: float = 0.0,
        nesterov: bool = False,
        max_weight: float | None = None,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid lr multiplier: {lr}")
        if momentum < 0.0:
            raise ValueError(f"Invalid momentum value: {momentum}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        if nesterov and (momentum <= 0 or dampening != 0):
            raise ValueError(
                f"Nesterov momentum requires a momentum and zero dampening, got momentum={momentum}, "
                f"dampening={dampening}"
            )
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "dampening": dampening,
            "weight_decay": weight_decay,
            "nesterov": nesterov,
        }
        super().__init__(model, eta_min, eta_max, seed, defaults, max_weight)

    _BUFFERS = ("momentum_buffer",)

    @property
    def plain(self) -> bool:
        """Plain SGD on every group (no momentum, no weight decay): ``p <- p - lr eta_i grad``."""
        return all(g["momentum"] == 0 and g["weight_decay"] == 0 for g in self.param_groups)

    def _update(self, updates: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]) -> None:
        """SGD with per-feature rates on ``(group, params, grads)`` triples (under no_grad)."""
        # p <- p - lr * eta * d, one foreach call per distinct lr (the groups usually share it)
        by_lr: dict[float, tuple[list[Tensor], list[Tensor]]] = {}
        for group, params, grads in updates:
            momentum, wd = group["momentum"], group["weight_decay"]
            if wd != 0:
                grads = torch._foreach_add(grads, params, alpha=wd)
            if momentum != 0:
                bufs = [self.state[p].get("momentum_buffer") for p in params]
                if any(b is None for b in bufs):
                    for i, p in enumerate(params):
                        if bufs[i] is None:
                            bufs[i] = self.state[p]["momentum_buffer"] = grads[i].detach().clone()
                        else:
                            bufs[i].mul_(momentum).add_(grads[i], alpha=1 - group["dampening"])
                else:
                    torch._foreach_mul_(bufs, momentum)
                    torch._foreach_add_(bufs, grads, alpha=1 - group["dampening"])
                grads = torch._foreach_add(grads, bufs, alpha=momentum) if group["nesterov"] else bufs
            same_lr = by_lr.setdefault(group["lr"], ([], []))
            same_lr[0].extend(params)
            same_lr[1].extend(grads)
        for lr, (params, directions) in by_lr.items():
            torch._foreach_addcmul_(params, directions, self._rates(params), value=-lr)


class AlraoAdam(_AlraoOptimizer):
    """Adam with Alrao per-feature learning rates (Appendix E: less reliable than AlraoSGD).

    :param model: the network (see :class:`AlraoSGD`).
    :param eta_min: lower end of the log-uniform interval.
    :param eta_max: upper end.
    :param seed: seeds the rate generator.
    :param lr: global multiplier on every rate, default 1.0.
    :param betas: as ``torch.optim.Adam``.
    :param eps: as ``torch.optim.Adam``.
    :param weight_decay: L2 penalty, as ``torch.optim.Adam``.
    :param max_weight: see :class:`AlraoSGD`.
    """

    def __init__(
        self,
        model: nn.Module,
        eta_min: float = 1e-6,
        eta_max: float = 1.0,
        seed: int = 0,
        *,
        lr: float = 1.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        max_weight: float | None = None,
    ) -> None:
        if lr < 0.0:
            raise ValueError(f"Invalid lr multiplier: {lr}")
        if not eps >= 0.0:
            raise ValueError(f"Invalid epsilon value: {eps}")
        for i, beta in enumerate(betas):
            if not 0.0 <= beta < 1.0:
                raise ValueError(f"Invalid beta parameter at index {i}: {beta}")
        if weight_decay < 0.0:
            raise ValueError(f"Invalid weight_decay value: {weight_decay}")
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay}
        super().__init__(model, eta_min, eta_max, seed, defaults, max_weight)

    _BUFFERS = ("exp_avg", "exp_avg_sq")
    plain = False

    def _update(self, updates: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]]) -> None:
        """Adam with per-feature rates on ``(group, params, grads)`` triples (under no_grad)."""
        for group, params, grads in updates:
            beta1, beta2 = group["betas"]
            for p in params:
                state = self.state[p]
                if "step" not in state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            steps = [self.state[p]["step"] for p in params]
            exp_avgs = [self.state[p]["exp_avg"] for p in params]
            exp_avg_sqs = [self.state[p]["exp_avg_sq"] for p in params]
            torch._foreach_add_(steps, 1.0)
            if group["weight_decay"] != 0:
                grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
            torch._foreach_lerp_(exp_avgs, grads, 1 - beta1)
            torch._foreach_mul_(exp_avg_sqs, beta2)
            torch._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
            # Same arithmetic as torch.optim.Adam(foreach=True), with lr -> lr * eta_i.
            step_values = [float(s) for s in steps]
            bias_correction1 = [1 - beta1**s for s in step_values]
            bias_correction2_sqrt = [math.sqrt(1 - beta2**s) for s in step_values]
            denom = torch._foreach_sqrt(exp_avg_sqs)
            torch._foreach_div_(denom, bias_correction2_sqrt)
            torch._foreach_add_(denom, group["eps"])
            update = torch._foreach_div(exp_avgs, denom)
            torch._foreach_mul_(update, [-group["lr"] / bc for bc in bias_correction1])
            torch._foreach_addcmul_(params, update, self._rates(params))
