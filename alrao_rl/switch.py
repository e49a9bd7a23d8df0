"""The switch: Bayesian model averaging over *switching sequences* of models (Appendix A).

van Erven, Grünwald, de Rooij (2012), with the prior of the Alrao authors' code. The switch is a
hidden Markov model whose hidden state at time ``t`` is a pair ``(s_t, K_t)``: the model ``K_t``
that predicts observation ``t`` and a flag ``s_t`` saying whether it may still switch
(``s = 0``) or never will (``s = 1``).

Prior:

* ``K_1`` is uniform over the ``N`` models; ``s_1 = 0`` with probability ``theta``.
* After update ``t`` (``t = 1, 2, ...``), a model that may still switch does so with probability
  ``alpha_t = 1/(t+1)``; the next model is uniform over all ``N`` models (possibly the same one)
  and with probability ``1 - theta`` that switch is the last (``s_{t+1} = 1``).

With ``w_t(s, j) = P(s_t = s, K_t = j, y_{1:t-1})`` the forward recursion is, in log space,

.. math::
   \\tilde w_t(s, j) &= w_t(s, j)\\, p_j(y_t)
       \\qquad\\text{(likelihood)}\\\\
   w_{t+1}(0, j) &= (1-\\alpha_t)\\, \\tilde w_t(0, j) + \\alpha_t\\, \\theta\\, S_t / N,\\\\
   w_{t+1}(1, j) &= \\tilde w_t(1, j) + \\alpha_t (1 - \\theta)\\, S_t / N,
       \\qquad S_t = \\textstyle\\sum_k \\tilde w_t(0, k).

``posterior[j] = P(K_{t+1} = j | y_{1:t})`` (the *predictive* posterior, normalized
``w_{t+1}``) weights the heads in the paper. ``filtered_posterior[j] = P(K_t = j | y_{1:t})``
(normalized ``w~_t``) drops the prior mass of switching into a model that just did badly; the
RL agents need it because they feed the model's own average back as a target.

Non-finite log-likelihoods (NaN, +-inf) count as likelihood 0. If every model has likelihood 0 the
update is skipped (posterior kept) with a warning.

A switch may hold ``P`` independent switches at once (``members=P``: one per member of a population
of runs trained together); :func:`switch_update` is the one recursion, which a single switch runs once
and a switch of members once per member.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Switch", "switch_update"]

_STATE = ("log_weights", "log_predictive", "log_filtered", "steps")
_NUMPY_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def switch_update(
    log_weights: list[list[float]], predictive: list[float], steps: int, log_likelihoods: list[float], theta: float
) -> tuple[list[list[float]], list[float], list[float]] | None:
    """One step of the switch recursion (module docstring) for one switch of ``N`` models, in plain
    Python floats (float64): for ``N ~ 10`` models, ~40 scalar operations cost less than the ~30 calls
    of a numpy version, and a population runs it member by member, so that each member's switch
    is its single run's bit for bit.

    :param log_weights: the normalized ``log w_t(s, j)``, ``[[...N], [...N]]`` (``s = 0, 1``).
    :param predictive: ``log sum_s w_t(s, j)``, ``[N]``.
    :param steps: the updates ``t - 1`` done so far.
    :param log_likelihoods: ``log p_j(y_t)``, ``[N]``; NaN and +-inf count as likelihood 0.
    :param theta: the prior parameter.
    :return: ``(log_weights, log_filtered, log_predictive)`` after the update, or None when every
        model has likelihood 0 (nothing to update).
    """
    ll = log_likelihoods
    if not math.isfinite(sum(ll)):  # some are NaN or +-inf
        ll = [x if math.isfinite(x) else -math.inf for x in ll]
    # Shifting every log-likelihood by the same constant leaves the posterior unchanged, and keeps
    # their differences: at -2.5e31, float64 cannot hold a difference of 5.
    best = max(ll)
    if best == -math.inf:
        return None
    exp, log, log1p = math.exp, math.log, math.log1p
    # Bayes: filtered_j ∝ predictive_j p_j(y_t), with predictive_j = sum_s w_t(s, j) (all finite)
    joint = [lp + (x - best) for lp, x in zip(predictive, ll, strict=True)]
    top = max(joint)
    total = top + log(sum([exp(v - top) for v in joint]))
    # w~_t(s, j) = w_t(s, j) p_j(y_t) / total
    shift = [x - best - total for x in ll]
    may_switch, settled = log_weights
    w0 = [w + d for w, d in zip(may_switch, shift, strict=True)]
    t = steps + 1
    # switch_in = log(alpha_t S_t / N), alpha_t = 1/(t+1)
    top = max(w0)
    switch_in = top + log(sum([exp(v - top) for v in w0])) - log((t + 1) * len(ll))
    stay, in0, in1 = log(t / (t + 1)), switch_in + log(theta), switch_in + log1p(-theta)
    # log(e^x + e^c) for a finite c (x may be -inf): max + log1p(exp(min - max))
    new0 = [w + stay for w in w0]
    new0 = [w + log1p(exp(in0 - w)) if w > in0 else in0 + log1p(exp(w - in0)) for w in new0]
    new1 = [w + d for w, d in zip(settled, shift, strict=True)]
    new1 = [w + log1p(exp(in1 - w)) if w > in1 else in1 + log1p(exp(w - in1)) for w in new1]
    pairs = zip(new0, new1, strict=True)
    new_predictive = [a + log1p(exp(b - a)) if a > b else b + log1p(exp(a - b)) for a, b in pairs]
    return [new0, new1], [x - total for x in joint], new_predictive


class Switch(nn.Module):
    """Switch model averaging of ``n_models`` predictors (``members`` independent switches of them).

    State (all buffers, so ``state_dict`` saves it): ``log_weights`` ``[2, N]`` float64 (normalized
    joint log-probabilities of ``(s, K)`` for the next observation), their marginal
    ``log_predictive`` ``[N]``, ``log_filtered`` ``[N]`` and ``steps`` (the number of updates ``t``);
    with ``members=P`` each has a leading dimension ``P``.

    :param n_models: number of models (Alrao heads), >= 1.
    :param theta: prior probability that switching is allowed at all / that a switch is not the
        last, in (0, 1). The authors use 0.999.
    :param members: None for one switch, or the number ``P`` of independent switches held together.

    >>> switch = Switch(3)
    >>> switch.update(torch.tensor([-1.0, -0.1, -5.0]))
    >>> switch.posterior.argmax().item()
    1
    """

    log_weights: Tensor
    log_predictive: Tensor
    log_filtered: Tensor
    steps: Tensor

    def __init__(self, n_models: int, theta: float = 0.999, members: int | None = None) -> None:
        super().__init__()
        if isinstance(n_models, bool) or not isinstance(n_models, int):
            raise TypeError(f"n_models must be an int, got {type(n_models).__name__} ({n_models!r})")
        if n_models < 1:
            raise ValueError(f"n_models must be >= 1, got {n_models}")
        if not (isinstance(theta, (int, float)) and 0.0 < theta < 1.0):
            raise ValueError(f"theta must be in (0, 1), got {theta!r}")
        if members is not None and (isinstance(members, bool) or not isinstance(members, int) or members < 1):
            raise ValueError(f"members must be None or an int >= 1, got {members!r}")
        self.n_models = n_models
        self.theta = float(theta)
        self.members = members
        lead = () if members is None else (members,)
        log_n = math.log(n_models)
        prior = torch.tensor([[math.log(theta) - log_n], [math.log1p(-theta) - log_n]], dtype=torch.float64)
        self.register_buffer("log_weights", prior.expand(*lead, 2, n_models).clone())
        uniform = torch.full((*lead, n_models), -log_n, dtype=torch.float64)
        self.register_buffer("log_predictive", uniform.clone())
        self.register_buffer("log_filtered", uniform.clone())
        self.register_buffer("steps", torch.zeros(lead, dtype=torch.int64))
        self._scratch = _Scratch()

    @property
    def log_posterior(self) -> Tensor:
        """``log P(K_{t+1} = j | y_{1:t})``, float64 ``[N]`` (uniform before any update)."""
        return self.log_predictive

    @property
    def posterior(self) -> Tensor:
        """``P(K_{t+1} = j | y_{1:t})``: the paper's model averaging weights ``a_j``."""
        return self.log_posterior.exp()

    @property
    def log_filtered_posterior(self) -> Tensor:
        """``log P(K_t = j | y_{1:t})`` after ``t`` updates (the prior before the first)."""
        return self.log_filtered

    @property
    def filtered_posterior(self) -> Tensor:
        """``P(K_t = j | y_{1:t})``: the state after the likelihood update, before the transition."""
        return self.log_filtered.exp()

    def update(self, log_likelihoods: Tensor | np.ndarray | list[float]) -> None:
        """Observe one (mini-batch) outcome: ``log_likelihoods[j] = log p_j(y_t)``.

        :param log_likelihoods: shape ``[n_models]`` (``[members, n_models]``); NaN and +-inf count
            as likelihood 0. A list of floats or a float64 numpy array is read without conversion.
        """
        shape = (self.n_models,) if self.members is None else (self.members, self.n_models)
        if isinstance(log_likelihoods, (Tensor, np.ndarray)):
            got = tuple(log_likelihoods.shape)
        elif isinstance(log_likelihoods, list):
            got = (len(log_likelihoods),) if self.members is None else np.shape(log_likelihoods)
        else:
            raise TypeError(
                "log_likelihoods must be a Tensor, a numpy array or a list of floats, got "
                f"{type(log_likelihoods).__name__}"
            )
        if got != shape:
            raise ValueError(f"log_likelihoods must have shape {shape}, got {got}")
        if self.members is None:
            ll = log_likelihoods if isinstance(log_likelihoods, list) else log_likelihoods.tolist()
        elif isinstance(log_likelihoods, Tensor):
            ll = log_likelihoods.detach().cpu().double().numpy()
        else:
            ll = np.asarray(log_likelihoods, dtype=np.float64)
        scratch = self._scratch
        host = weights, predictive, filtered, steps = self._host_buffers(scratch)
        theta = self.theta
        if self.members is None:
            result = switch_update(weights.tolist(), predictive.tolist(), int(steps), ll, theta)  # type: ignore[arg-type]
            updated = result is not None
            if result is not None:
                weights[...], filtered[...], predictive[...] = result
                steps[...] = int(steps) + 1
        else:  # member by member (exactly each member's single switch), one read and one write
            all_weights, all_predictive, all_filtered = weights.tolist(), predictive.tolist(), filtered.tolist()
            all_steps = steps.tolist()
            updated = True
            states = zip(all_weights, all_predictive, all_steps, ll.tolist(), strict=True)
            for k, (w, pred, t, lls) in enumerate(states):
                result = switch_update(w, pred, t, lls, theta)
                if result is None:
                    updated = False
                    continue
                all_weights[k], all_filtered[k], all_predictive[k] = result
                all_steps[k] = t + 1
            weights[...], predictive[...], filtered[...] = all_weights, all_predictive, all_filtered
            steps[...] = all_steps
        if not updated:
            warnings.warn(
                "Switch.update: every model has likelihood 0 (non-finite log-likelihoods); "
                "keeping the previous posterior",
                RuntimeWarning,
                stacklevel=2,
            )
        scratch.averaging.clear()
        if scratch.views is None:  # not on the CPU: copy back
            for name, array in zip(_STATE, host, strict=True):
                self._buffers[name].copy_(torch.from_numpy(array))  # type: ignore[union-attr]

    def averaging_weights(self, filtered: bool, dtype: torch.dtype, device: torch.device) -> tuple[Tensor, Tensor]:
        """``(log a, a)``: the filtered (or predictive) posterior as ``dtype`` on ``device``.

        Cached until the next :meth:`update` or write to the buffers (``load_state_dict``), so the
        forward passes between two updates convert them once. The returned tensors are shared:
        do not modify them in place.
        """
        source: Tensor = self._buffers["log_filtered" if filtered else "log_predictive"]  # type: ignore[assignment]
        key = (filtered, dtype, device, source._version)
        cache = self._scratch.averaging
        cached = cache.get(key)
        if cached is None:
            if device.type == "cpu" and dtype in _NUMPY_DTYPES and source.device.type == "cpu":
                # numpy on the cached views of the buffers: no torch call on the hot path
                log_a, a = self.averaging_arrays(filtered, _NUMPY_DTYPES[dtype])
                cached = (torch.from_numpy(log_a), torch.from_numpy(a))
            else:
                log_a = source.to(device=device, dtype=dtype)
                cached = (log_a, log_a.exp())
            if len(cache) > 8:
                cache.clear()
            cache[key] = cached
        return cached

    def averaging_arrays(self, filtered: bool, dtype: type[np.floating]) -> tuple[np.ndarray, np.ndarray]:
        """``(log a, a)`` as numpy arrays of ``dtype`` (what :class:`alrao_rl.AlraoStep` computes with; copies,
        not views of the buffers), cached like :meth:`averaging_weights`. Do not modify them in place."""
        source: Tensor = self._buffers["log_filtered" if filtered else "log_predictive"]  # type: ignore[assignment]
        key = (filtered, dtype, source._version)
        cache = self._scratch.averaging
        cached = cache.get(key)
        if cached is None:
            host = self._host_buffers(self._scratch)[2 if filtered else 1]
            with np.errstate(over="ignore"):  # a log-weight below float32's range is -inf, as torch casts it
                log_a = host.astype(dtype)
            if len(cache) > 8:
                cache.clear()
            cached = cache[key] = (log_a, np.exp(log_a))
        return cached  # type: ignore[return-value]

    def _host_buffers(self, scratch: _Scratch) -> tuple[np.ndarray, ...]:
        """The state buffers as numpy arrays: views of them on the CPU (cached while they are the
        same tensors), copies otherwise (``update`` then copies them back)."""
        b, held = self._buffers, scratch.buffers
        if (
            held
            and held[0] is b["log_weights"]
            and held[1] is b["log_predictive"]
            and held[2] is b["log_filtered"]
            and held[3] is b["steps"]
        ):
            return scratch.views  # type: ignore[return-value]
        buffers = tuple(b[name] for name in _STATE)
        if any(t is None or t.device.type != "cpu" for t in buffers):
            scratch.buffers, scratch.views = (), None
            return tuple(t.detach().cpu().numpy() for t in buffers)  # type: ignore[union-attr]
        scratch.buffers, scratch.views = buffers, tuple(t.detach().numpy() for t in buffers)  # type: ignore[union-attr]
        return scratch.views

    def _apply(self, fn: Any, recurse: bool = True) -> Switch:
        self._scratch = _Scratch()
        return super()._apply(fn, recurse)

    def extra_repr(self) -> str:
        members = "" if self.members is None else f", members={self.members}"
        return f"n_models={self.n_models}, theta={self.theta}{members}"


class _Scratch:
    """What a :class:`Switch` derives from its buffers (not state): numpy views of them and the
    averaging weights converted for the model, reset by ``update`` and ``Module._apply``."""

    __slots__ = ("averaging", "buffers", "views")

    def __init__(self) -> None:
        self.buffers: tuple = ()
        self.views: tuple[np.ndarray, ...] | None = None
        self.averaging: dict[tuple, tuple] = {}

    def __reduce__(self) -> tuple:
        return (_Scratch, ())  # a copied or unpickled switch has new buffers: derive afresh

