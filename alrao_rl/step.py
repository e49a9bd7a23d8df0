"""``AlraoStep``: one fused Alrao training step, for one run or a population of runs.

::

    step = AlraoStep(model, optimizer)
    result = step(x, y)                                      # classification or regression
    result = step(obs, td_target, index=actions, variance=v) # DQN: the Q-value of the action taken

does what ``model.loss`` + ``loss.backward()`` + ``optimizer.step()`` + ``model.switch.update`` do
(Algorithm 1: the body follows the gradient of the mixture's negative log-likelihood, head ``j``
the gradient of its own, then the switch sees every head's likelihood), with the same safety, in
fewer torch calls than a plain SGD step. With ``u_jb`` head ``j``'s output on sample ``b``,
``g_jb = dL_j/du_jb`` and the responsibilities ``q_jb`` (module docstring of :mod:`alrao_rl.losses`):

* the heads run without autograd, as one batched matmul ``[P, M, in] x [P, in, N*out]``;
* the arithmetic on their outputs (errors, likelihoods, ``q``, the factors of both gradients: a few
  hundred numbers for a DQN batch) runs in numpy on views of the same memory, where a call costs a
  fraction of a torch call (torch for a classifier's ``[M, N, classes]`` arrays, where it is faster);
* the body's gradient is ``autograd.grad(z, body, sum_j q_j g_j W_j)``: one small product to form;
* head ``j``'s own step is one more product: with SGD ``W_j += (-lr eta_j g_j)^T [z, 1]``, its rate
  and factors folded into ``g`` first, so one in-place ``baddbmm_`` updates every head; with
  momentum, weight decay or Adam the gradient ``g_j^T [z, 1]`` goes through the optimizer;
* the per-unit rates are one ``_foreach_addcmul_``; the guard (one 2-norm over every weight, held in
  one flat buffer) and the switch update are the optimizer's and the switch's own.

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
        # the submodules, held here: nn.Module's attribute lookup costs more than a small tensor op
        self._heads, self._switch, self._body_module = heads, model.switch, model.body
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
        switch_variance: float | np.ndarray | RunningVariance | None = None,
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
        :param switch_variance: regression: the variance of the Gaussian likelihoods the switch scores the heads
            with (same forms as ``variance``); None: ``variance``. A loss at variance 1 (the paper's squared error)
            with the switch at a running variance trains at fixed rates while the switch tells heads apart at
            the scale of their errors.
        :param features: the body's output ``z`` for ``x``, computed by the caller with autograd
            (a recurrent body, a features extractor); default ``model.body(x)``.
        """
        model, heads = self.model, self._heads
        if features is None:
            if x is None:
                raise ValueError("x is needed when features is not given")
            features = self._body_module(x)
        if model.task == "classification" and index is not None:
            raise ValueError("index selects regression outputs; classification uses every class")
        target = check_target(features, target, index, model.task, heads.out_features)
        z = heads.mask_features(features)
        p = model.members or 1
        z3 = z.reshape(p, -1, heads.in_features)
        # (autograd.grad below still runs the body's backward; an overflow is sorted out by _rare, not warned of)
        with torch.no_grad(), np.errstate(all="ignore"):
            b = _Batch(self, z3, target, index)
            var = self._variance(b, variance)
            svar = None if switch_variance is None else self._variance(b, switch_variance)
            ll = b.log_likelihoods(var, svar)
            skip = None
            # (a numpy view of the dead heads: no torch call per step, though a DQN always has some)
            every_head_dead = heads.any_dead and heads.dead.numpy().reshape(p, b.n).all(axis=1).any()
            if every_head_dead or not np.isfinite(ll).all():  # rare: bad data, a diverged feature or head
                z3, skip = self._rare(b, x, features, var, svar)
                if skip is not None and skip.all():
                    self.optimizer.guard([(g, g["params"]) for g in self.optimizer.param_groups])
                    return self._result(np.full(p, math.nan), np.full((p, b.n), -np.inf), skip, var)
                ll = b.log_likelihoods(var, svar)
            loss = b.mixture()
            plain = self.optimizer.plain
            grad_z = b.gradients(var, self._own_factor(b, var, skip, plain))
            body_grads = _body_gradients(z3, self._body, grad_z) if self._body else ()
            self._update(b, body_grads, skip, plain)
        if heads.any_dead:  # dead for good: likelihood 0 for the switch, whatever they output now
            ll = np.where(heads.dead.numpy().reshape(p, b.n), -np.inf, ll)
        if skip is not None:
            ll, loss = np.where(skip[:, None], -np.inf, ll), np.where(skip, math.nan, loss)
        self._switch.update(ll[0].tolist() if model.members is None else ll)
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

    def _update(self, b: _Batch, body_grads: tuple[Tensor | None, ...], skip: np.ndarray | None, plain: bool) -> None:
        """Body: the optimizer's rule with per-unit rates; heads: their own step (in place when ``plain``: see
        :meth:`_own_factor`); then the guard."""
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
        own_bias = b.own.sum(dim=1) if b.b3 is not None else None  # sum_b own_jb
        if plain:  # W_j <- W_j - lr eta_j g_j^T z: own already holds -lr eta_j g_j
            b.w3.baddbmm_(b.own.transpose(1, 2), b.zd)
            if own_bias is not None:
                b.b3.view(b.p, -1).add_(own_bias)
        else:
            head_grads = [torch.bmm(b.own.transpose(1, 2), b.zd).view_as(self._head_params[0])]
            if own_bias is not None:
                head_grads.append(own_bias.view_as(self._head_params[1]))
            updates.append((self._head_group, self._head_params, head_grads))
        if updates:
            opt._update(updates)
        opt.guard(self._checked)

    def _own_factor(self, b: _Batch, var: np.ndarray, skip: np.ndarray | None, plain: bool) -> np.ndarray:
        """What multiplies head ``j``'s ``d L_j / d u_j`` without its ``1/M`` (and ``1/sigma^2``), float64
        ``[P, N]``: ``1/M``, ``/ sigma^2`` for regression, or ``1 / (M E_b ||[z_b, 1]||^2)`` for a normalized
        step (whose ``sigma^2`` cancels the likelihood's ``1/sigma^2``); times ``-lr eta_j`` when the heads take
        plain SGD steps in place; 0 for a skipped member."""
        normalized = self.model.head_step == "normalized"
        scale = 1.0 / (b.m * (b.curvature_trace() if normalized else var))
        if skip is not None:
            scale = np.where(skip, 0.0, scale)
        if plain:
            return (-self._head_group["lr"] * scale)[:, None] * self._head_rates(b)
        return np.broadcast_to(scale[:, None], (b.p, b.n))

    def _head_rates(self, b: _Batch) -> np.ndarray:
        """The heads' rates ``eta_j``, ``[P, N]``: a numpy view of the optimizer's state (cached while it
        is the same tensor; a frozen head's 0 shows through the view)."""
        state = self.optimizer.state[self._head_params[0]][_RATE]
        cached = self._cache.get("rates")
        if cached is None or cached[0] is not state:
            cached = self._cache["rates"] = (state, state.detach().numpy().reshape(b.p, b.n))
        return cached[1]

    def _rare(
        self, b: _Batch, x: Tensor | None, features: Tensor, var: np.ndarray, svar: np.ndarray | None
    ) -> tuple[Tensor, np.ndarray | None]:
        """Sort out non-finite values (module docstring); return the features to use ``[P, M, in]``
        and the ``[P]`` mask of the members whose batch trains nothing (None if none)."""
        model, heads = self.model, self._heads
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
        usable &= torch.from_numpy(np.isfinite(b.log_likelihoods(var, svar)))
        none = ~usable.any(dim=1).numpy() & ~skip
        if none.any():
            _warn("no head has a finite likelihood on this batch (the body diverged?); it trains nothing")
            skip |= none
        if heads.any_dead:  # (a dead head outputs 0 once zeroed: finite, yet dead for good)
            gone = heads.dead.view(p, b.n).all(dim=1).numpy() & ~skip
            if gone.any():
                _warn("every head is dead (diverged for good); the batch trains nothing")
                skip |= gone
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
    :meth:`log_likelihoods` -> :meth:`mixture` -> :meth:`gradients`.

    The heads' outputs come from one batched matmul; the small arithmetic on them (errors,
    likelihoods, responsibilities, the factors of both gradients: a few hundred numbers) runs in
    numpy on views of the same memory, where a call costs a fraction of a torch call. Every
    reduction stays within a member (over its samples in order, or over its heads), so a member's
    numbers are those of its single run, bit for bit.
    """

    def __init__(self, step: AlraoStep, z3: Tensor, target: Tensor, index: Tensor | None) -> None:
        model, heads = step.model, step._heads
        self.task = model.task
        self.p, self.m = z3.shape[0], z3.shape[1]
        self.n, self.c = heads.n_heads, heads.out_features
        self.dtype = _NUMPY[z3.dtype]
        params = step._head_params
        self.w3, self.w3t, self.b3 = _head_views(step._cache, params[0], params[1] if len(params) > 1 else None, self.p)
        self.w_read = self.w3
        log_a, a = step._switch.averaging_arrays(model.averaging == "filtered", self.dtype)
        self.log_a, self.a = log_a.reshape(self.p, 1, self.n), a.reshape(self.p, 1, self.n)
        self.target = target
        full = (self.c,) if self.task == "regression" and index is None else ()
        self.y = target.detach().numpy().reshape(self.p, self.m, *full)
        self.usable: np.ndarray | None = None
        self.sel: np.ndarray | None = None
        if index is not None:  # where head j's selected output of sample b is in the flat [P, M, N*out] outputs
            key = ("select", self.p, self.m, self.n, self.c)
            base = step._cache.get(key)
            if base is None:
                rows = np.arange(self.p * self.m).reshape(self.p, self.m, 1) * (self.n * self.c)
                base = step._cache[key] = rows + np.arange(0, self.n * self.c, self.c)
            self.sel = index.numpy().reshape(self.p, self.m, 1) + base
        self.set_features(z3)

    def set_features(self, z3: Tensor) -> None:
        """The heads' input ``[P, M, in]`` and their outputs ``[P, M, N*out]`` on it (``v``: a numpy view)."""
        self.zd = z3
        self.diff: np.ndarray | None = None
        self.values = torch.baddbmm(self.b3, z3, self.w3t) if self.b3 is not None else torch.bmm(z3, self.w3t)
        self.v = self.values.numpy()

    def restrict(self, usable: Tensor, skip: np.ndarray) -> None:
        """Leave the unusable heads ``[P, N]`` out: averaging weight 0 (renormalized), no gradient,
        weights not read. A skipped member's outputs, inputs and targets are read as zeros (its
        step is computed finite, then discarded); its heads count as usable."""
        p, n, c = self.p, self.n, self.c
        keep = ~skip
        self.usable = use = usable.numpy() | skip[:, None]
        log_a = np.where(use[:, None, :], self.log_a, -np.inf).astype(self.dtype)
        lost = ~use.all(axis=1)  # renormalize the members that lost heads only (the others keep their numbers)
        if lost.any():
            sub = log_a[lost]
            top = sub.max(axis=2, keepdims=True)
            log_a[lost] = sub - (top + np.log(np.exp(sub - top).sum(axis=2, keepdims=True)))
        self.log_a = log_a
        rows = np.repeat(use, c, axis=1)
        self.w_read = torch.where(torch.from_numpy(rows).view(p, n * c, 1), self.w3, 0.0)  # no 0 * inf = NaN in dz
        self.v = np.where((rows & keep[:, None])[:, None, :], self.v, 0).astype(self.dtype)
        self.values = torch.from_numpy(self.v)
        if skip.any():
            self.zd = torch.where(torch.from_numpy(keep).view(p, 1, 1), self.zd, 0.0)
            if self.target.is_floating_point():
                self.y = np.where(keep.reshape((p,) + (1,) * (self.y.ndim - 1)), self.y, 0).astype(self.y.dtype)

    # --- regression --------------------------------------------------------------------------------

    def _diff(self) -> np.ndarray:
        """``mu - y``: ``[P, M, N]`` for the selected output, else ``[P, M, N, out]``."""
        if self.sel is not None:
            return self.v.reshape(-1)[self.sel] - self.y[:, :, None]
        return self.v.reshape(self.p, self.m, self.n, self.c) - self.y[:, :, None, :]

    def averaged_mse(self) -> float | np.ndarray:
        """The averaged model's mean squared error per output, ``mean_b ||sum_j a_j mu_jb - y_b||^2 /
        out``, per member (``sum_j a_j = 1``: the averaged error is the average of the heads')."""
        self.diff = diff = self._diff()
        a = self.a if diff.ndim == 3 else self.a[..., None]
        error = (diff * a).sum(axis=2).reshape(self.p, -1)
        total = (error * error).sum(axis=1, dtype=np.float64) / error.shape[1]
        return float(total[0]) if self.p == 1 else total

    def log_likelihoods(self, var: np.ndarray, switch_var: np.ndarray | None = None) -> np.ndarray:
        """``ll_j = mean_b log p_j(y_b)``, float64 ``[P, N]``, and what :meth:`mixture` needs:
        ``joint = log a_j + log p_j(y_b) - const`` ``[P, M, N]``. Regression: ``joint`` with the variance of
        the loss ``var``, ``ll`` (what the switch sees) with ``switch_var`` (default ``var``)."""
        p, m, n = self.p, self.m, self.n
        if self.task == "classification":
            self.log_p = torch.log_softmax(self.values.view(p, m, n, self.c), dim=3)
            y = np.broadcast_to(self.y.reshape(p, m, 1, 1), (p, m, n, 1))
            ll = np.take_along_axis(self.log_p.numpy(), y, axis=3)[..., 0]
            if self.usable is not None:
                ll = np.where(self.usable[:, None, :], ll, 0).astype(self.dtype)
            self.joint, self.const = ll + self.log_a, np.zeros(p)
            return ll.sum(axis=1, dtype=np.float64) / m
        if self.diff is None or self.usable is not None:
            self.diff = self._diff()
        diff = self.diff
        if self.usable is not None:
            use = self.usable[:, None, :] if diff.ndim == 3 else self.usable[:, None, :, None]
            self.diff = diff = np.where(use, diff, 0).astype(self.dtype)
        sq = diff * diff if diff.ndim == 3 else (diff * diff).sum(axis=3)
        dim = 1 if diff.ndim == 3 else self.c
        # log p_j(y_b) = -sq / (2 sigma^2) + const, const = -dim/2 log(2 pi sigma^2)
        self.joint = self.log_a + sq * self.member_factor(-0.5 / var)
        self.const = -0.5 * dim * (_LOG_2PI + np.log(var))
        ll = sq.sum(axis=1, dtype=np.float64)
        if switch_var is None:
            ll *= (-0.5 / (var * m))[:, None]
            ll += self.const[:, None]
        else:
            ll *= (-0.5 / (switch_var * m))[:, None]
            ll += (-0.5 * dim * (_LOG_2PI + np.log(switch_var)))[:, None]
        return ll

    def member_factor(self, values: np.ndarray) -> np.ndarray:
        """Per-member numbers ``[P]`` (float64) as ``[P, 1, 1]`` of the model's dtype."""
        return values.astype(self.dtype).reshape(self.p, 1, 1)

    # --- gradients -----------------------------------------------------------------------------------

    def mixture(self) -> np.ndarray:
        """``L_mix = -mean_b log sum_j a_j p_j(y_b)``, float64 ``[P]``; keeps the responsibilities
        ``q_jb`` (a softmax of ``joint`` over heads)."""
        joint = self.joint
        top = joint.max(axis=2, keepdims=True)
        q = np.exp(joint - top)
        total = q.sum(axis=2, keepdims=True)
        q /= total
        self.q = q
        log_mixture = (np.log(total, dtype=np.float64) + top).sum(axis=(1, 2)) / self.m
        return -(log_mixture + self.const)

    def gradients(self, var: np.ndarray, own_factor: np.ndarray) -> Tensor:
        """``dL_mix/dz = sum_j q_j g_j W_j`` ``[P, M, in]`` (Algorithm 1, line 12), with
        ``g = (mu - y) / (M sigma^2)`` or ``(softmax - onehot) / M``; and, kept as ``own``
        ``[P, M, N*out]``, each head's error ``mu - y`` (``softmax - onehot``) times ``own_factor``
        ``[P, N]`` (:meth:`AlraoStep._own_factor`: ``1 / (M sigma^2)`` or the normalized step's factor,
        times ``-lr eta_j`` for a plain step), so that line 15 is ``W_j += own^T [z, 1]``.
        """
        p, m = self.p, self.m
        if self.task == "classification":
            y = torch.from_numpy(self.y).view(p, m, 1, 1).expand(p, m, self.n, 1)
            g = self.log_p.exp_().scatter_add_(3, y, self.log_p.new_full(y.shape, -1.0))  # [P, M, N, out]
            q = self.q * self.dtype(1.0 / m)
        else:
            g = self.diff
            q = self.q * self.member_factor(1.0 / (m * var))
        factor = own_factor.astype(self.dtype)[:, None, :]
        if self.sel is not None:  # spread the selected outputs' factors (own and mixture's) into their columns
            both = np.zeros((2, p, m, self.n * self.c), dtype=self.dtype)
            both[0].reshape(-1)[self.sel] = g * factor
            both[1].reshape(-1)[self.sel] = g * q
            own, mix = torch.from_numpy(both).unbind(0)
        else:  # every output: in torch, in place where it can (large for classification: [P, M, N, classes])
            g = torch.from_numpy(g) if isinstance(g, np.ndarray) else g
            mix = (g * torch.from_numpy(q[..., None])).view(p, m, -1)
            own = g.mul_(torch.from_numpy(factor[..., None])).view(p, m, -1)
        self.own = own
        return torch.bmm(mix, self.w_read)

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
