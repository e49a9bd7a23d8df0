"""``AlraoStep``: one fused Alrao training step, for one run or a population of runs.

::

    step = AlraoStep(model, optimizer)
    result = step(x, y)                                      # classification or regression
    result = step(obs, td_target, index=actions, variance=v) # DQN: the Q-value of the action taken

does what ``model.loss`` + ``loss.backward()`` + ``optimizer.step()`` + ``model.switch.update`` do
(Algorithm 1: the body follows the gradient of the mixture's negative log-likelihood, head ``j``
the gradient of its own, then the switch sees every head's likelihood), with the same safety, in
about as many torch calls as a plain SGD step. With ``u_jb`` head ``j``'s output on sample ``b``,
``g_jb = dL_j/du_jb`` and the responsibilities ``q_jb`` (module docstring of :mod:`alrao_rl.losses`):

* the heads run without autograd, as one batched matmul ``[P, M, in] x [P, in, N*out]``;
* the body's gradient is ``autograd.grad(z, body, sum_j q_j g_j W_j)``: one small product to form;
* head ``j``'s own gradient ``g_j^T [z, 1]`` is one more product; with SGD it is applied in place,
  its rate ``lr eta_j`` (and the ``head_step`` normalization) folded into one ``addcmul_``; with
  momentum, weight decay or Adam it goes through the optimizer;
* the per-unit rates are one ``_foreach_addcmul_``; the guard and the switch update are the
  optimizer's and the switch's own.

The constant of a Gaussian log-likelihood is the same for every head: it is left out of the
``[M, N]`` arithmetic (it cancels in ``q``) and added to the few numbers that carry it.

Everything rare costs only when it happens and is sorted out by :meth:`AlraoStep._rare`: non-finite
inputs or targets (bad data: the batch trains nothing, with a warning, and nothing is frozen), a
non-finite body feature (the body's fault: the feature is marked dead, no head is blamed), heads
whose outputs or likelihoods are not finite (left out and marked dead, then zeroed and frozen by the
optimizer).

**Members.** A model built with ``members=P`` holds ``P`` independent runs (a population): its body
maps ``[P, ...]`` to ``[P, ..., in]``, every body parameter has a leading member dimension, heads,
switch and rates have one copy per member. The same code runs it: a single run is ``P = 1`` seen
through views. Members never mix: a member's bad batch or diverged heads affect it alone.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from torch import Tensor

from .losses import _LOG_2PI, check_target
from .model import AlraoModel
from .optim import AlraoAdam, AlraoSGD
from .variance import RunningVariance

__all__ = ["AlraoStep", "StepResult"]

try:  # the engine call torch.autograd.grad makes after checking its arguments (torch >= 2.3)
    from torch.autograd.graph import _engine_run_backward as _run_backward
except ImportError:  # pragma: no cover
    _run_backward = None

_RATE = "alrao_rate"
_NUMPY = {torch.float32: np.float32, torch.float64: np.float64}


class StepResult(NamedTuple):
    """What one :class:`AlraoStep` call did.

    ``loss``: the mixture negative log-likelihood of the batch before the step (NaN if it trained
    nothing): a float, or a ``[P]`` array with members. ``head_ll``: float64 ``[N]`` (``[P, N]``)
    minibatch-mean log-likelihoods the switch was updated with (``-inf`` for dead or left-out
    heads). ``skipped``: the batch trained nothing (bad data, or no usable head): a bool, or ``[P]``.
    ``variance``: the heads' Gaussian variance used (regression; 1 for classification).
    """

    loss: float | np.ndarray
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
        self._head_params = [heads.weight] if heads.bias is None else [heads.weight, heads.bias]
        if not all(p in optimizer.state for p in self._head_params) or heads not in optimizer._heads:
            raise ValueError("optimizer was not built over this model's heads")
        self.model = model
        self.optimizer = optimizer
        ids = {id(p) for p in self._head_params}
        body_groups = [g for g in optimizer.param_groups if not any(id(p) in ids for p in g["params"])]
        self._head_group = next(g for g in optimizer.param_groups if any(id(p) in ids for p in g["params"]))
        self._body_group: dict[str, Any] | None = body_groups[0] if body_groups else None
        self._body = [p for p in body_groups[0]["params"] if p.requires_grad] if body_groups else []
        if model.members is not None:
            bad = [tuple(p.shape) for p in self._body if p.dim() == 0 or p.shape[0] != model.members]
            if bad:
                raise ValueError(f"every body parameter of a model with members needs a leading dimension "
                                 f"{model.members}, got shapes {bad}")
        self._checked = [(self._head_group, self._head_params)]
        if self._body_group is not None:
            self._checked.insert(0, (self._body_group, self._body))
        self._cache: dict[str, Any] = {}

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
        if model.task == "classification" and index is not None:
            raise ValueError("index selects regression outputs; classification uses every class")
        target = check_target(features, target, index, model.task, heads.out_features)
        z = heads.mask_features(features)
        p = model.members or 1
        z3 = z.reshape(p, -1, heads.in_features)
        with torch.no_grad():  # (autograd.grad below still runs the body's backward)
            b = _Batch(self, z3, target, index)
            var = self._variance(b, variance)
            ll = b.log_likelihoods(var)
            skip = None
            if not np.isfinite(ll).all():  # rare: bad data, a diverged feature or head
                z3, skip = self._rare(b, x, features, var)
                if skip is not None and skip.all():
                    self.optimizer.guard([(g, g["params"]) for g in self.optimizer.param_groups])
                    return self._result(np.full(p, math.nan), np.full((p, b.n), -np.inf), skip, var)
                ll = b.log_likelihoods(var)
            loss = b.mixture()
            grad_z = b.body_gradient(var)
            own = b.own_gradient()
            body_grads = _body_gradients(z3, self._body, grad_z) if self._body else ()
            self._update(b, body_grads, own, var, skip)
        if heads.any_dead:  # dead for good: likelihood 0 for the switch, whatever they output now
            ll = np.where(heads.dead.view(p, b.n).numpy(), -np.inf, ll)
        if skip is not None:
            ll, loss = np.where(skip[:, None], -np.inf, ll), np.where(skip, math.nan, loss)
        model.switch.update(ll[0].tolist() if model.members is None else ll)
        return self._result(loss, ll, skip, var)

    # --- pieces -------------------------------------------------------------------------------------

    def _variance(self, b: _Batch, variance: float | np.ndarray | RunningVariance) -> np.ndarray:
        """``sigma^2`` per member, float64 ``[P]`` (1 for classification)."""
        if b.task != "regression":
            return np.ones(b.p)
        if isinstance(variance, RunningVariance):
            variance = variance.update(b.averaged_mse())
        if isinstance(variance, (int, float)):
            if not (math.isfinite(variance) and variance > 0):
                raise ValueError(f"variance must be a finite number > 0, got {variance!r}")
            return np.full(b.p, float(variance))
        values = np.asarray(variance, dtype=np.float64).reshape(-1)
        if values.shape != (b.p,) or not (np.isfinite(values).all() and (values > 0).all()):
            raise ValueError(f"variance must be {b.p} finite numbers > 0, got {variance!r}")
        return values

    def _update(
        self,
        b: _Batch,
        body_grads: tuple[Tensor | None, ...],
        own: tuple[Tensor, Tensor | None],
        var: np.ndarray,
        skip: np.ndarray | None,
    ) -> None:
        """Body: the optimizer's rule with per-unit rates; heads: their own step; then the guard."""
        opt = self.optimizer
        params, grads = [], []
        keep = None if skip is None else torch.from_numpy(~skip)
        for param, grad in zip(self._body, body_grads, strict=True):
            if grad is not None:
                if keep is not None:  # a skipped member's slice gets no step (its gradient may be NaN)
                    grad = torch.where(keep.view(-1, *[1] * (grad.dim() - 1)), grad, 0.0)
                params.append(param)
                grads.append(grad)
        updates: list[tuple[dict[str, Any], list[Tensor], list[Tensor]]] = []
        if params:
            updates.append((self._body_group, params, grads))  # type: ignore[arg-type]
        # own = (the heads' own weight gradient [P, N*out, in], its bias gradient [P, N*out]), each
        # still to be multiplied by its member's factor `scale` [P, 1, 1]
        grad_w, grad_b = own
        scale = self._head_scale(b, var)
        if keep is not None:
            scale = torch.where(keep.view(-1, 1, 1), scale, 0.0)
        grad_w.mul_(scale)
        if grad_b is not None:
            grad_b.mul_(scale.view(-1, 1))
        if opt.plain:  # p <- p - lr eta_j g, in place
            lr = -self._head_group["lr"]
            rate_w, rate_b = self._head_rates(b)
            b.w3.addcmul_(grad_w, rate_w, value=lr)
            if grad_b is not None:
                b.b3.view(b.p, -1).addcmul_(grad_b, rate_b, value=lr)
        else:
            head_grads = [grad_w.view_as(self._head_params[0])]
            if grad_b is not None:
                head_grads.append(grad_b.view_as(self._head_params[1]))
            updates.append((self._head_group, self._head_params, head_grads))
        if updates:
            opt._update(updates)
        opt.guard(self._checked)

    def _head_scale(self, b: _Batch, var: np.ndarray) -> Tensor:
        """What multiplies ``g_j^T [z, 1]`` (``g`` without ``1/M``), per member ``[P, 1, 1]``: ``1/M``,
        ``/ sigma^2`` for regression, or ``1 / (M E_b ||[z_b, 1]||^2)`` for a normalized step (whose
        ``sigma^2`` cancels the likelihood's ``1/sigma^2``)."""
        if self.model.head_step == "normalized":
            return b.member_factor(1.0 / (b.m * b.curvature_trace()))
        return b.member_factor(1.0 / (b.m * var))

    def _head_rates(self, b: _Batch) -> tuple[Tensor, Tensor]:
        """The heads' rates ``eta_j`` as ``[P, N*out, 1]`` and ``[P, N*out]`` (cached until a freeze
        or a load changes them)."""
        state = self.optimizer.state[self.model.heads.weight][_RATE]
        cached = self._cache.get("rates")
        if cached is None or cached[0] is not state or cached[1] != state._version:
            rows = state.reshape(b.p, b.n, 1).expand(b.p, b.n, b.c).reshape(b.p, b.n * b.c)
            cached = (state, state._version, rows.unsqueeze(2), rows)
            self._cache["rates"] = cached
        return cached[2], cached[3]

    def _rare(
        self, b: _Batch, x: Tensor | None, features: Tensor, var: np.ndarray
    ) -> tuple[Tensor, np.ndarray | None]:
        """Sort out non-finite values (module docstring); return the features to use ``[P, M, in]``
        and the ``[P]`` mask of the members whose batch trains nothing (None if none)."""
        model, heads = self.model, self.model.heads
        p = b.p
        skip = np.zeros(p, dtype=bool)
        # bad data: non-finite targets or inputs
        if b.target.is_floating_point():
            skip |= ~torch.isfinite(b.target.reshape(p, -1)).all(dim=1).numpy()
        if x is not None and x.is_floating_point():
            skip |= ~torch.isfinite(x.reshape(p, -1)).all(dim=1).numpy()
        if skip.any():
            _warn("the batch holds non-finite inputs or targets; it trains nothing (nothing is frozen)")
        # the body's fault: non-finite features
        with torch.enable_grad():  # (called under no_grad) the body's gradient flows through the mask
            z3 = heads.mask_features(features).reshape(p, -1, heads.in_features)
        bad = torch.isfinite(b.zd).logical_not_().any(dim=1)  # [P, in]: feature non-finite somewhere
        bad &= torch.from_numpy(~skip).view(p, 1)
        if bool(bad.any()):
            every = bad.all(dim=1).numpy()
            if every.any():
                _warn("every feature of the body's output is non-finite (a hidden unit overflowed: see "
                      "max_weight); the batch trains nothing")
                skip |= every
                bad &= torch.from_numpy(~every).view(p, 1)
            heads.mark_dead_features(bad if model.members is not None else bad[0])
            with torch.enable_grad():
                z3 = heads.mask_features(features).reshape(p, -1, heads.in_features)
            b.set_features(z3)
        # the heads' fault: non-finite outputs or likelihoods
        usable = torch.isfinite(b.values.view(p, b.m, b.n, b.c)).all(dim=3).all(dim=1)
        usable &= torch.from_numpy(np.isfinite(b.log_likelihoods(var)))
        none = ~usable.any(dim=1).numpy() & ~skip
        if none.any():
            _warn("no head has a finite likelihood on this batch (the body diverged?); it trains nothing")
            skip |= none
        dead = ~usable & torch.from_numpy(~skip).view(p, 1)
        if bool(dead.any()):
            heads.mark_dead(dead if model.members is not None else dead[0])
        b.restrict(usable, skip)
        return z3, (skip if skip.any() else None)

    def _result(self, loss: np.ndarray, ll: np.ndarray, skip: np.ndarray | None, var: np.ndarray) -> StepResult:
        if self.model.members is None:
            return StepResult(float(loss[0]), ll[0], bool(skip is not None and skip[0]), float(var[0]))
        skipped = np.zeros(len(var), dtype=bool) if skip is None else skip
        return StepResult(loss, ll, skipped, var)


class _Batch:
    """One minibatch laid out ``[P, M, ...]`` (members, samples) and the closed-form pieces of
    Algorithm 1's gradients computed from it, in order (all under no_grad):
    :meth:`log_likelihoods` -> :meth:`mixture` -> :meth:`body_gradient` -> :meth:`own_gradient`."""

    def __init__(self, step: AlraoStep, z3: Tensor, target: Tensor, index: Tensor | None) -> None:
        model, heads = step.model, step.model.heads
        self.task = model.task
        self.p, self.m = z3.shape[0], z3.shape[1]
        self.n, self.c = heads.n_heads, heads.out_features
        self.w3, self.w3t, self.b3 = _head_views(step._cache, heads.weight, heads.bias, self.p)
        self.w_read = self.w3
        log_a, a = model.switch.averaging_weights(model.averaging == "filtered", z3.dtype, z3.device)
        self.log_a, self.a = log_a.view(self.p, 1, self.n), a
        self.target = target
        self.usable: Tensor | None = None
        self.flat_index = None
        if index is not None:  # column of head j's selected output in the [P, M, N*out] outputs
            offsets = step._cache.get("offsets")
            if offsets is None or offsets.size != self.n:
                offsets = step._cache["offsets"] = np.arange(0, self.n * self.c, self.c)
            self.flat_index = torch.from_numpy(index.numpy().reshape(self.p, self.m, 1) + offsets)
        self.set_features(z3)

    def set_features(self, z3: Tensor) -> None:
        """The heads' input ``[P, M, in]`` and their outputs ``[P, M, N*out]`` on it."""
        self.zd = z3
        self.diff: Tensor | None = None
        self.values = torch.baddbmm(self.b3, z3, self.w3t) if self.b3 is not None else torch.bmm(z3, self.w3t)

    def restrict(self, usable: Tensor, skip: np.ndarray) -> None:
        """Leave the unusable heads ``[P, N]`` out: averaging weight 0 (renormalized), no gradient,
        weights not read. A skipped member's outputs, inputs and targets are read as zeros (its
        step is computed finite, then discarded); its heads count as usable."""
        p, n, c = self.p, self.n, self.c
        keep = torch.from_numpy(~skip)
        usable = usable | ~keep.view(p, 1)
        self.usable = usable
        log_a = torch.where(usable.view(p, 1, n), self.log_a, -math.inf)
        # renormalize the members that lost heads only (the others keep their numbers exactly)
        lost = ~usable.all(dim=1).view(p, 1, 1)
        self.log_a = torch.where(lost, log_a - torch.logsumexp(log_a, dim=2, keepdim=True), self.log_a)
        rows = usable.repeat_interleave(c, dim=1)
        self.w_read = torch.where(rows.view(p, n * c, 1), self.w3, 0.0)  # 0 * inf = NaN must not reach dz
        cols = (rows & keep.view(p, 1)).view(p, 1, n * c)
        self.values = torch.where(cols, self.values, 0.0)
        if skip.any():
            self.zd = torch.where(keep.view(p, 1, 1), self.zd, 0.0)
            if self.target.is_floating_point():
                self.target = torch.where(keep.view((p,) + (1,) * (self.target.dim() - 1)), self.target, 0.0)

    # --- regression --------------------------------------------------------------------------------

    def _diff(self) -> Tensor:
        """``mu - y``: ``[P, M, N]`` for the selected output, else ``[P, M, N, out]``."""
        if self.flat_index is not None:
            return self.values.gather(2, self.flat_index) - self.target.view(self.p, self.m, 1)
        values = self.values.view(self.p, self.m, self.n, self.c)
        return values - self.target.reshape(self.p, self.m, 1, self.c)

    def averaged_mse(self) -> float | np.ndarray:
        """The averaged model's mean squared error per output, ``mean_b ||sum_j a_j mu_jb - y_b||^2 /
        out``, per member (``sum_j a_j = 1``: the averaged error is the average of the heads')."""
        self.diff = diff = self._diff()
        # (reductions whose rounding does not depend on a member's place in the batch: a member's
        # numbers are those of its single run, bit for bit)
        if self.flat_index is not None:
            error = torch.linalg.vecdot(diff, self.a.view(self.p, 1, self.n))  # [P, M]
        else:
            error = (diff * self.a.view(self.p, 1, self.n, 1)).sum(dim=2)  # [P, M, out]
        error = error.view(self.p, -1)
        total = torch.linalg.vecdot(error, error) / error.shape[1]
        return float(total) if self.p == 1 else total.double().numpy()

    def log_likelihoods(self, var: np.ndarray) -> np.ndarray:
        """``ll_j = mean_b log p_j(y_b)``, float64 ``[P, N]``, and what :meth:`mixture` needs:
        ``joint = log a_j + log p_j(y_b) - const`` ``[P, M, N]``."""
        if self.task == "classification":
            values = self.values.view(self.p, self.m, self.n, self.c)
            self.log_p = torch.log_softmax(values, dim=3)
            self.y_index = self.target.reshape(self.p, self.m, 1, 1).expand(self.p, self.m, self.n, 1)
            ll = self.log_p.gather(3, self.y_index).view(self.p, self.m, self.n)
            if self.usable is not None:
                ll = torch.where(self.usable.view(self.p, 1, self.n), ll, 0.0)
            self.joint, self.const = ll + self.log_a, np.zeros(self.p)
            return ll.sum(dim=1).numpy().astype(np.float64) / self.m
        if self.diff is None or self.usable is not None:
            self.diff = self._diff()
        diff = self.diff
        if self.usable is not None:
            lead = (self.p, 1, self.n) + ((1,) if diff.dim() == 4 else ())
            self.diff = diff = torch.where(self.usable.view(lead), diff, 0.0)
        sq = diff.square() if diff.dim() == 3 else diff.square().sum(dim=3)
        dim = 1 if diff.dim() == 3 else self.c
        # log p_j(y_b) = -sq / (2 sigma^2) + const, const = -dim/2 log(2 pi sigma^2)
        self.joint = torch.addcmul(self.log_a, sq, self.member_factor(-0.5 / var))
        self.const = -0.5 * dim * (_LOG_2PI + np.log(var))
        ll = sq.sum(dim=1).numpy().astype(np.float64)
        ll *= (-0.5 / (var * self.m))[:, None]
        ll += self.const[:, None]
        return ll

    def member_factor(self, values: np.ndarray) -> Tensor:
        """Per-member numbers ``[P]`` (float64) as a ``[P, 1, 1]`` tensor of the model's dtype."""
        return torch.from_numpy(values.astype(_NUMPY[self.zd.dtype]).reshape(self.p, 1, 1))

    # --- gradients -----------------------------------------------------------------------------------

    def mixture(self) -> np.ndarray:
        """``L_mix = -mean_b log sum_j a_j p_j(y_b)``, float64 ``[P]``; keeps the responsibilities
        ``q_jb`` (a softmax of ``joint`` over heads)."""
        joint = self.joint
        top = joint.amax(dim=2, keepdim=True)
        q = joint.sub_(top).exp_()
        total = q.sum(dim=2, keepdim=True)
        self.q = q.div_(total)
        log_mixture = (np.log(total.numpy(), dtype=np.float64) + top.numpy()).sum(axis=(1, 2)) / self.m
        return -(log_mixture + self.const)

    def body_gradient(self, var: np.ndarray) -> Tensor:
        """``dL_mix/dz = sum_j q_j g_j W_j`` ``[P, M, in]`` (Algorithm 1, line 12), with
        ``g = (mu - y) / (M sigma^2)`` or ``(softmax - onehot) / M``."""
        if self.task == "classification":
            y = self.y_index
            self.g = self.log_p.exp_().scatter_add_(3, y, self.log_p.new_full(y.shape, -1.0))
            q = self.q.mul_(1.0 / self.m)
        else:
            self.g = self.diff
            q = self.q.mul_(self.member_factor(1.0 / (self.m * var)))
        mix = self.g * (q if self.g.dim() == 3 else q.unsqueeze(3))
        if self.flat_index is not None:  # spread the selected outputs' factors (own and mixture's) at once
            both = self.values.new_zeros(2, self.p, self.m, self.n * self.c)
            both.scatter_(3, self.flat_index.expand(2, -1, -1, -1), torch.stack((self.g, mix)))
            self.g, mix = both.unbind(0)
        else:
            self.g = self.g.view(self.p, self.m, -1)
            mix = mix.view(self.p, self.m, -1)
        return torch.bmm(mix, self.w_read)

    def own_gradient(self) -> tuple[Tensor, Tensor | None]:
        """Each head's own ``g_j^T z`` ``[P, N*out, in]`` and ``sum_b g_jb`` ``[P, N*out]`` (Algorithm 1,
        line 15), ``g`` without its factor (see :meth:`AlraoStep._head_scale`)."""
        g = self.g
        grad_w = torch.bmm(g.transpose(1, 2), self.zd)
        return grad_w, (g.sum(dim=1) if self.b3 is not None else None)

    def curvature_trace(self) -> np.ndarray:
        """``E_b ||[z_b, 1]||^2`` per member, float64 ``[P]`` (the ``1`` when the heads have biases)."""
        z = self.zd.reshape(self.p, -1)
        trace = torch.linalg.vecdot(z, z).numpy().astype(np.float64) / self.m
        return trace + 1.0 if self.b3 is not None else trace


def _body_gradients(z: Tensor, params: Sequence[Tensor], grad_z: Tensor) -> tuple[Tensor | None, ...]:
    """``torch.autograd.grad(z, params, grad_z, allow_unused=True)``, calling the autograd engine as that
    function does once it has checked its arguments (its checks cost more than a small MLP's backward);
    the public function where the engine's entry point is not there."""
    if _run_backward is None:
        return torch.autograd.grad(z, params, grad_z, allow_unused=True)
    return _run_backward((z,), (grad_z,), False, False, tuple(params), True, False)


def _head_views(cache: dict[str, Any], weight: Tensor, bias: Tensor | None, p: int) -> tuple:
    """``[P, N*out, in]`` and transposed views of the heads' weight and ``[P, 1, N*out]`` of the bias,
    cached while they view the same storage."""
    cached = cache.get("views")
    if cached is not None and cached[0] is weight and cached[1].data_ptr() == weight.data_ptr() and (
        bias is None or cached[3].data_ptr() == bias.data_ptr()
    ):
        return cached[1], cached[2], cached[3]
    w3 = weight.detach().view(p, -1, weight.shape[-1])
    b3 = None if bias is None else bias.detach().view(p, 1, -1)
    cache["views"] = (weight, w3, w3.transpose(1, 2), b3)
    return w3, w3.transpose(1, 2), b3


def _warn(message: str) -> None:
    warnings.warn(f"AlraoStep: {message}", RuntimeWarning, stacklevel=4)
