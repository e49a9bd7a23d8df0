"""``AlraoStep``: one fused Alrao training step, for one run or a population of runs.

::

    step = AlraoStep(model, optimizer)
    result = step(x, y)                                      # classification or regression
    result = step(obs, td_target, index=actions, variance=v) # DQN: the Q-value of the action taken

does what ``model.loss`` + ``loss.backward()`` + ``optimizer.step()`` + ``model.switch.update`` do
(Algorithm 1: the body follows the gradient of the mixture's negative log-likelihood, head ``j``
the gradient of its own, then the switch sees every head's likelihood), with the same safety,
in about as many torch calls as a plain SGD step:

* the heads run without autograd, as one batched matmul ``[P, M, in] x [P, in, N*out]``;
* with ``g_jb = dL_j/du_jb`` (module docstring of :mod:`alrao_rl.losses`) and the
  responsibilities ``q_jb``, the body's gradient is ``autograd.grad(z, body, sum_j q_j g_j W_j)``,
  one small product to form;
* with SGD, head ``j``'s own step ``-lr eta_j g_j^T [z, 1]`` is one in-place ``baddbmm_`` whose
  ``[P, M, N*out]`` factor already holds ``lr eta_j / M`` (and the ``head_step`` normalization);
  with momentum, weight decay or Adam the heads' gradients go through the optimizer instead;
* the per-unit rates are one ``_foreach_addcmul_``; the guard and the switch update are the
  optimizer's and the switch's own.

Everything rare costs only when it happens and is sorted out by :meth:`AlraoStep._rare_masks`:
non-finite inputs or targets (bad data: the step is skipped with a warning, nothing frozen), a
non-finite body feature (its fault: the feature is marked dead, no head blamed), heads whose outputs
or likelihoods are not finite (left out and marked dead, then zeroed and frozen by the optimizer).

**Members.** A model built with ``members=P`` holds ``P`` independent runs (a population): its body
maps ``[P, ...]`` to ``[P, ..., in]``, every body parameter has a leading member dimension, heads,
switch and rates have one copy per member. The same code runs it: a single run is ``P = 1`` seen
through views. Members never mix: a member's bad batch or diverged heads affect it alone.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .losses import _LOG_2PI, check_target, curvature_trace
from .model import AlraoModel
from .optim import AlraoAdam, AlraoSGD
from .variance import RunningVariance

__all__ = ["AlraoStep", "StepResult"]

_RATE = "alrao_rate"


class StepResult(NamedTuple):
    """What one :class:`AlraoStep` call did.

    ``loss``: the mixture negative log-likelihood before the step (no gradient), a scalar, or
    ``[P]`` with members. ``head_ll``: float64 ``[N]`` (``[P, N]``) minibatch-mean
    log-likelihoods the switch was updated with (``-inf`` for dead or left-out heads).
    ``skipped``: the batch trained nothing (bad data, or no usable head): a bool, or ``[P]``.
    ``variance``: the heads' Gaussian variance used (regression), a float or ``[P]`` array.
    """

    loss: Tensor
    head_ll: np.ndarray
    skipped: bool | np.ndarray
    variance: float | np.ndarray


class AlraoStep:
    """Train ``model`` with ``optimizer`` one minibatch at a time, fused (module docstring).

    :param model: the :class:`alrao_rl.AlraoModel` (possibly with members).
    :param optimizer: the :class:`alrao_rl.AlraoSGD` or :class:`alrao_rl.AlraoAdam` built over the
        model, or over a module holding it (e.g. a features extractor and the model): every
        parameter of the optimizer that is not a head's belongs to the body.
    """

    def __init__(self, model: AlraoModel, optimizer: AlraoSGD | AlraoAdam) -> None:
        if not isinstance(model, AlraoModel):
            raise TypeError(f"model must be an AlraoModel, got {type(model).__name__}")
        if not isinstance(optimizer, (AlraoSGD, AlraoAdam)):
            raise TypeError(f"optimizer must be an AlraoSGD or AlraoAdam, got {type(optimizer).__name__}")
        heads = model.heads
        head_params = [p for p in (heads.weight, heads.bias) if p is not None]
        if not all(p in optimizer.state for p in head_params) or heads not in optimizer._heads:
            raise ValueError("optimizer was not built over this model's heads")
        self.model = model
        self.optimizer = optimizer
        ids = {id(p) for p in head_params}
        body_groups = [g for g in optimizer.param_groups if not any(id(p) in ids for p in g["params"])]
        self._head_group = next(g for g in optimizer.param_groups if any(id(p) in ids for p in g["params"]))
        self._body_group: dict[str, Any] | None = body_groups[0] if body_groups else None
        self._body = [p for p in body_groups[0]["params"] if p.requires_grad] if body_groups else []
        if model.members is not None:
            bad = [tuple(p.shape) for p in self._body if p.dim() == 0 or p.shape[0] != model.members]
            if bad:
                raise ValueError(f"every body parameter of a model with members needs a leading dimension "
                                 f"{model.members}, got shapes {bad}")

    def __call__(
        self,
        x: Tensor | None,
        target: Tensor,
        *,
        index: Tensor | None = None,
        variance: float | np.ndarray | RunningVariance = 1.0,
        features: Tensor | None = None,
    ) -> StepResult:
        """One training step on a minibatch.

        :param x: the body's input (``[P, ...]`` with members); may be None when ``features`` is given.
        :param target: class indices ``[*lead]``; regression targets ``[*lead, out]``, or ``[*lead]``
            with ``index`` (``lead`` starts with ``P`` with members).
        :param index: regression: the output selected per sample (a DQN's action), int64 ``[*lead]``.
        :param variance: regression: the heads' Gaussian variance ``sigma^2``: a number (``[P]`` with
            members), or a :class:`alrao_rl.RunningVariance` updated first with this minibatch's
            squared error of the averaged model.
        :param features: the body's output ``z`` for ``x``, computed by the caller with autograd
            (a recurrent body, a features extractor); default ``model.body(x)``.
        """
        model, heads = self.model, self.model.heads
        if features is None:
            if x is None:
                raise ValueError("x is needed when features is not given")
            features = model.body(x)
        task = model.task
        target = check_target(features, target, index, task, heads.out_features)
        z = heads.mask_features(features)
        members = model.members
        p = 1 if members is None else members
        n, c, d = heads.n_heads, heads.out_features, heads.in_features
        z3 = z.reshape(p, -1, d)
        m = z3.shape[1]
        with torch.no_grad():
            w3 = heads.weight.view(p, n * c, d)
            bias = heads.bias
            b3 = None if bias is None else bias.view(p, 1, n * c)
            zd = z3.detach()
            log_a, a = model.switch.averaging_weights(model.averaging == "filtered", zd.dtype, zd.device)
            parts = _Parts(p, m, n, c, task, index, target, log_a.view(p, 1, n), a.view(p, 1, n), w3, b3, zd)
            var = self._variance(parts, variance)
            ll = parts.log_likelihoods(var)
            head_ll = ll.mean(dim=1)
            ll_host = head_ll.double().numpy()
            skip = None
            if not np.isfinite(ll_host).all():  # rare: bad data, a diverged feature or head
                z, skip = self._rare_masks(parts, x, features, var)
                if skip is not None and skip.all():
                    self.optimizer.guard([(g, g["params"]) for g in self.optimizer.param_groups])
                    return self._skipped(parts, var)
                with torch.enable_grad():
                    z3 = z.reshape(p, -1, d)
                ll = parts.log_likelihoods(var)
                head_ll = torch.where(parts.usable, ll.mean(dim=1), -math.inf) if parts.usable is not None else None
                ll_host = head_ll.double().numpy()
            loss = parts.mixture(ll)
            if skip is not None:
                loss = torch.where(torch.from_numpy(skip), math.nan, loss)
            grad_z = parts.body_gradient(var, skip)
            own = self._own_factor(parts, var, skip)
        body_grads = torch.autograd.grad(z3, self._body, grad_z, allow_unused=True) if self._body else ()
        with torch.no_grad():
            self._update(parts, body_grads, own, skip)
        if heads.any_dead:  # dead for good: likelihood 0 for the switch, whatever they output now
            ll_host = np.where(heads.dead.view(p, n).numpy(), -np.inf, ll_host)
        if skip is not None:
            ll_host = np.where(skip[:, None], -np.inf, ll_host)
        model.switch.update(ll_host[0].tolist() if members is None else ll_host)
        return StepResult(
            loss[0] if members is None else loss,
            ll_host[0] if members is None else ll_host,
            False if skip is None else (bool(skip[0]) if members is None else skip),
            _public(var, members),
        )

    # --- pieces -------------------------------------------------------------------------------------

    def _variance(self, parts: _Parts, variance: float | np.ndarray | RunningVariance) -> float | Tensor:
        """``sigma^2`` as a float (one run, or one value for all) or a ``[P, 1, 1]`` tensor."""
        if parts.task != "regression":
            return 1.0
        if isinstance(variance, RunningVariance):
            variance = variance.update(parts.averaged_mse())
        if isinstance(variance, (int, float)):
            if not (math.isfinite(variance) and variance > 0):
                raise ValueError(f"variance must be a finite number > 0, got {variance!r}")
            return float(variance)
        values = np.asarray(variance, dtype=np.float64).reshape(-1)
        if values.shape != (parts.p,) or not (np.isfinite(values).all() and (values > 0).all()):
            raise ValueError(f"variance must be {parts.p} finite numbers > 0, got {variance!r}")
        if parts.p == 1:
            return float(values[0])
        return torch.from_numpy(values).to(parts.zd.dtype).view(parts.p, 1, 1)

    def _own_factor(self, parts: _Parts, var: float | Tensor, skip: np.ndarray | None) -> Tensor:
        """Each head's own gradient ``dL_j/du`` spread to ``[P, M, N*out]`` (Algorithm 1, line 15):
        ``g_j / M`` (``/ sigma^2`` for regression), or ``g_j / (M tr F)`` with ``tr F`` without its
        ``1/sigma^2`` for a normalized step (the ``sigma^2`` cancels); times ``lr eta_j`` when
        plain SGD applies it in place. The weight gradient is then ``own^T z``, the bias's
        ``sum_b own``."""
        p, n = parts.p, parts.n
        if self.model.head_step == "normalized":
            trace = curvature_trace(parts.zd, parts.b3 is not None, members=True).view(p, 1, 1)
            coef = trace.mul_(parts.m).reciprocal_()
        elif parts.task == "regression":
            coef = 1.0 / (parts.m * var)
        else:
            coef = 1.0 / parts.m
        if self.optimizer.plain:
            rate = self.optimizer.state[self.model.heads.weight][_RATE].view(p, 1, n)
            coef = rate * (coef * self._head_group["lr"])
        elif isinstance(coef, float):
            coef = parts.zd.new_full((p, 1, n), coef)
        if parts.usable is not None:
            coef = torch.where(parts.usable.view(p, 1, n), coef, 0.0)
        if skip is not None:
            coef = torch.where(torch.from_numpy(~skip).view(p, 1, 1), coef, 0.0)
        if parts.index is None:
            coef = coef.unsqueeze(3)
        return parts.spread(parts.g * coef)

    def _update(
        self, parts: _Parts, body_grads: tuple[Tensor | None, ...], own: Tensor, skip: np.ndarray | None
    ) -> None:
        """Body: the optimizer's rule with per-unit rates; heads: their own step; then the guard."""
        opt, heads = self.optimizer, self.model.heads
        params, grads = [], []
        for param, grad in zip(self._body, body_grads, strict=True):
            if grad is not None:
                if skip is not None:  # a skipped member's slice gets no step (its gradient may be NaN)
                    keep = torch.from_numpy(~skip).view(-1, *[1] * (grad.dim() - 1))
                    grad = torch.where(keep, grad, 0.0)
                params.append(param)
                grads.append(grad)
        updates: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]] = []
        if params:
            updates.append((self._body_group, params, grads))  # type: ignore[arg-type]
        head_params = [heads.weight] if heads.bias is None else [heads.weight, heads.bias]
        # own = the heads' own gradient factor [P, M, N*out]; the rates are folded in when plain
        grad_w = torch.bmm(own.transpose(1, 2), parts.zd)
        if opt.plain:
            parts.w3.sub_(grad_w)
            if parts.b3 is not None:
                parts.b3.sub_(own.sum(dim=1, keepdim=True))
        else:
            head_grads = [grad_w.view_as(heads.weight)]
            if heads.bias is not None:
                head_grads.append(own.sum(dim=1).view_as(heads.bias))
            updates.append((self._head_group, head_params, head_grads))
        if updates:
            opt._update(updates)
        checked = [(self._head_group, head_params)]
        if params:
            checked.insert(0, (self._body_group, params))  # type: ignore[arg-type]
        opt.guard(checked)

    def _rare_masks(
        self, parts: _Parts, x: Tensor | None, features: Tensor, var: float | Tensor
    ) -> tuple[Tensor, np.ndarray | None]:
        """Sort out non-finite values (module docstring); return the features to use and the
        ``[P]`` mask of the members whose batch trains nothing (None if none)."""
        model, heads = self.model, self.model.heads
        p = parts.p
        skip = np.zeros(p, dtype=bool)
        # bad data: non-finite targets or inputs
        if parts.target.is_floating_point():
            skip |= ~torch.isfinite(parts.target.reshape(p, -1)).all(dim=1).numpy()
        if x is not None and x.is_floating_point():
            skip |= ~torch.isfinite(x.reshape(p, -1)).all(dim=1).numpy()
        if skip.any():
            _warn("the batch holds non-finite inputs or targets; it trains nothing (nothing is frozen)")
        # the body's fault: non-finite features
        z = heads.mask_features(features)
        bad = torch.isfinite(parts.zd).logical_not_().any(dim=1)  # [P, d]: feature non-finite somewhere
        bad &= torch.from_numpy(~skip).view(p, 1)
        if bool(bad.any()):
            every = bad.all(dim=1).numpy()
            if every.any():
                _warn("every feature of the body's output is non-finite (a hidden unit overflowed: see "
                      "max_weight); the batch trains nothing")
                skip |= every
                bad &= torch.from_numpy(~every).view(p, 1)
            heads.mark_dead_features(bad if model.members is not None else bad[0])
            with torch.enable_grad():  # (called under no_grad) the body's gradient flows through the mask
                z = heads.mask_features(features)
            parts.set_features(z.reshape(p, -1, parts.zd.shape[-1]).detach())
        # the heads' fault: non-finite outputs or likelihoods
        ll = parts.log_likelihoods(var)
        usable = torch.isfinite(parts.values.view(p, parts.m, parts.n, -1)).all(dim=3).all(dim=1)
        usable &= torch.isfinite(ll).all(dim=1)
        none = ~usable.any(dim=1).numpy() & ~skip
        if none.any():
            _warn("no head has a finite likelihood on this batch (the body diverged?); it trains nothing")
            skip |= none
        dead = ~usable & torch.from_numpy(~skip).view(p, 1)
        if bool(dead.any()):
            heads.mark_dead(dead if model.members is not None else dead[0])
        usable |= torch.from_numpy(skip).view(p, 1)  # (skipped members: computed, then discarded)
        parts.restrict(usable, skip)
        return z, (skip if skip.any() else None)

    def _skipped(self, parts: _Parts, var: float | Tensor) -> StepResult:
        """Every member's batch trains nothing: no update at all."""
        members = self.model.members
        nan = torch.full((parts.p,), math.nan)
        head_ll = np.full((parts.p, parts.n), -np.inf)
        return StepResult(
            nan[0] if members is None else nan,
            head_ll[0] if members is None else head_ll,
            True if members is None else np.ones(parts.p, dtype=bool),
            _public(var, members),
        )


class _Parts:
    """The tensors of one step, laid out ``[P, M, ...]`` (members, samples), and the closed-form
    pieces of Algorithm 1's gradients computed from them (all under no_grad)."""

    def __init__(
        self, p: int, m: int, n: int, c: int, task: str, index: Tensor | None, target: Tensor,
        log_a: Tensor, a: Tensor, w3: Tensor, b3: Tensor | None, zd: Tensor,
    ) -> None:
        self.p, self.m, self.n, self.c, self.task = p, m, n, c, task
        self.target = target
        self.log_a, self.a = log_a, a
        self.w3, self.b3 = w3, b3
        self.usable: Tensor | None = None
        self.onehot: Tensor | None = None
        self.index = None if index is None else index.reshape(p, m, 1, 1).expand(p, m, n, 1)
        self.set_features(zd)

    def set_features(self, zd: Tensor) -> None:
        """The heads' input ``[P, M, in]`` and their outputs ``[P, M, N*out]`` on it."""
        self.zd = zd
        w = self.w3.transpose(1, 2)
        self.values = torch.bmm(zd, w) if self.b3 is None else torch.baddbmm(self.b3, zd, w)

    def restrict(self, usable: Tensor, skip: np.ndarray) -> None:
        """Leave the unusable heads ``[P, N]`` out: averaging weight 0 (renormalized), no gradient,
        weights not read. A skipped member's outputs, inputs and targets are read as zeros (its
        step is computed finite, then discarded); its heads count as usable."""
        keep = torch.from_numpy(~skip)
        usable = usable | ~keep.view(self.p, 1)
        self.usable = usable
        log_a = torch.where(usable.view(self.p, 1, self.n), self.log_a, -math.inf)
        self.log_a = log_a - torch.logsumexp(log_a, dim=2, keepdim=True)
        self.a = self.log_a.exp()
        rows = usable.repeat_interleave(self.c, dim=1).view(self.p, self.n * self.c, 1)
        self.w3_read = torch.where(rows, self.w3, 0.0)  # 0 * inf = NaN must not reach dz
        cols = usable & keep.view(self.p, 1)
        cols = cols.view(self.p, 1, self.n, 1).expand(-1, -1, -1, self.c).reshape(self.p, 1, -1)
        self.values = torch.where(cols, self.values, 0.0)
        if skip.any():
            self.zd = torch.where(keep.view(self.p, 1, 1), self.zd, 0.0)
            if self.target.is_floating_point():
                lead = (self.p,) + (1,) * (self.target.dim() - 1)
                self.target = torch.where(keep.view(lead), self.target, 0.0)

    def selected(self) -> Tensor:
        """Regression outputs ``u``: ``[P, M, N]`` (the selected output) or ``[P, M, N, out]``."""
        values = self.values.view(self.p, self.m, self.n, self.c)
        if self.index is None:
            return values
        return values.gather(3, self.index).view(self.p, self.m, self.n)

    def _targets(self) -> Tensor:
        if self.index is None:
            return self.target.reshape(self.p, self.m, 1, self.c)
        return self.target.reshape(self.p, self.m, 1)

    def averaged_mse(self) -> float | np.ndarray:
        """The averaged model's mean squared error per member (a float for one member)."""
        u = self.selected()
        a = self.a if self.index is not None else self.a.unsqueeze(3)
        prediction = (u * a).sum(dim=2, keepdim=True)
        mse = (prediction - self._targets()).square().mean(dim=tuple(range(1, u.dim())))
        return float(mse) if self.p == 1 else mse.double().numpy()

    def log_likelihoods(self, var: float | Tensor) -> Tensor:
        """``log p_j(y_b)`` ``[P, M, N]``; keeps what the gradients need (``diff`` or ``log p``)."""
        if self.task == "classification":
            self.log_p = torch.log_softmax(self.values.view(self.p, self.m, self.n, self.c), dim=3)
            y = self.target.reshape(self.p, self.m, 1, 1).expand(self.p, self.m, self.n, 1)
            self.y_index = y
            ll = self.log_p.gather(3, y).view(self.p, self.m, self.n)
        else:
            self.diff = self.selected() - self._targets()  # mu - y
            sq = self.diff.square() if self.index is not None else self.diff.square().sum(dim=3)
            dim = 1 if self.index is not None else self.c
            if isinstance(var, float):
                ll = sq.mul_(-0.5 / var).sub_(0.5 * dim * (_LOG_2PI + math.log(var)))
            else:
                ll = torch.addcmul(-0.5 * dim * (_LOG_2PI + var.log()), sq, -0.5 / var)
        if self.usable is not None:
            ll = torch.where(self.usable.view(self.p, 1, self.n), ll, 0.0)
        return ll

    def mixture(self, ll: Tensor) -> Tensor:
        """``L_mix = -mean_b log sum_j a_j p_j(y_b)`` ``[P]``; keeps the responsibilities ``q``."""
        joint = ll + self.log_a
        top = joint.amax(dim=2, keepdim=True)
        q = joint.sub_(top).exp_()
        total = q.sum(dim=2, keepdim=True)
        self.q = q.div_(total)
        return total.log_().add_(top).mean(dim=(1, 2)).neg_()

    def _output_gradient(self) -> Tensor:
        """``g_jb`` without its ``1/M`` (and ``1/sigma^2``): ``[P, M, N]`` or ``[P, M, N, out]``;
        zero for the unusable heads."""
        if self.task == "classification":
            g = self.log_p.exp().scatter_add_(3, self.y_index, self.log_p.new_full(self.y_index.shape, -1.0))
        else:
            g = self.diff
        if self.usable is not None:
            lead = (self.p, 1, self.n) + ((1,) if g.dim() == 4 else ())
            g = torch.where(self.usable.view(lead), g, 0.0)
        return g

    def spread(self, factor: Tensor) -> Tensor:
        """Factors of the heads' outputs as ``[P, M, N*out]``: the selected outputs' ``[P, M, N]``
        factors go to their column (zeros elsewhere)."""
        if self.index is None:
            return factor.reshape(self.p, self.m, self.n * self.c)
        if self.onehot is None:
            self.onehot = self.values.new_zeros(self.p, self.m, 1, self.c).scatter_(3, self.index[:, :, :1], 1.0)
        return (factor.unsqueeze(3) * self.onehot).view(self.p, self.m, self.n * self.c)

    def body_gradient(self, var: float | Tensor, skip: np.ndarray | None) -> Tensor:
        """``dL_mix/dz = sum_j q_j g_j W_j`` ``[P, M, in]`` (Algorithm 1, line 12)."""
        self.g = self._output_gradient()
        scale = 1.0 / (self.m * var) if self.task == "regression" else 1.0 / self.m
        weights = self.q * scale if self.index is not None else (self.q * scale).unsqueeze(3)
        grad_z = torch.bmm(self.spread(self.g * weights), self.w3 if self.usable is None else self.w3_read)
        if skip is not None:
            grad_z = torch.where(torch.from_numpy(~skip).view(self.p, 1, 1), grad_z, 0.0)
        return grad_z


def _public(var: float | Tensor, members: int | None) -> float | np.ndarray:
    if isinstance(var, float):
        return var if members is None else np.full(members, var)
    return var.view(-1).double().numpy()


def _warn(message: str) -> None:
    warnings.warn(f"AlraoStep: {message}", RuntimeWarning, stacklevel=4)

