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
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["Switch"]


def _logsumexp(a: np.ndarray, axis: int | None = None) -> np.ndarray:
    """``log sum exp`` that returns ``-inf`` (not NaN) when every entry is ``-inf``."""
    m = np.max(a, axis=axis, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(a - m), axis=axis, keepdims=True)) + m
    return out if axis is None else np.squeeze(out, axis=axis)


class Switch(nn.Module):
    """Switch model averaging of ``n_models`` predictors.

    State (all buffers, so ``state_dict`` saves it): ``log_weights`` ``[2, N]`` float64 (normalized
    joint log-probabilities of ``(s, K)`` for the next observation), their marginal
    ``log_predictive`` ``[N]``, ``log_filtered`` ``[N]`` and ``steps`` (the number of updates ``t``).

    :param n_models: number of models (Alrao heads), >= 1.
    :param theta: prior probability that switching is allowed at all / that a switch is not the
        last, in (0, 1). The authors use 0.999.

    >>> switch = Switch(3)
    >>> switch.update(torch.tensor([-1.0, -0.1, -5.0]))
    >>> switch.posterior.argmax().item()
    1
    """

    log_weights: Tensor
    log_predictive: Tensor
    log_filtered: Tensor
    steps: Tensor

    def __init__(self, n_models: int, theta: float = 0.999) -> None:
        super().__init__()
        if isinstance(n_models, bool) or not isinstance(n_models, int):
            raise TypeError(f"n_models must be an int, got {type(n_models).__name__} ({n_models!r})")
        if n_models < 1:
            raise ValueError(f"n_models must be >= 1, got {n_models}")
        if not (isinstance(theta, (int, float)) and 0.0 < theta < 1.0):
            raise ValueError(f"theta must be in (0, 1), got {theta!r}")
        self.n_models = n_models
        self.theta = float(theta)
        log_n = math.log(n_models)
        prior = torch.tensor([[math.log(theta) - log_n], [math.log1p(-theta) - log_n]], dtype=torch.float64)
        self.register_buffer("log_weights", prior.expand(2, n_models).clone())
        uniform = torch.full((n_models,), -log_n, dtype=torch.float64)
        self.register_buffer("log_predictive", uniform.clone())
        self.register_buffer("log_filtered", uniform.clone())
        self.register_buffer("steps", torch.zeros((), dtype=torch.int64))

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

    @torch.no_grad()
    def update(self, log_likelihoods: Tensor) -> None:
        """Observe one (mini-batch) outcome: ``log_likelihoods[j] = log p_j(y_t)``.

        :param log_likelihoods: shape ``[n_models]``; NaN and +-inf count as likelihood 0.
        """
        if not isinstance(log_likelihoods, Tensor):
            raise TypeError(f"log_likelihoods must be a Tensor, got {type(log_likelihoods).__name__}")
        if log_likelihoods.shape != (self.n_models,):
            raise ValueError(
                f"log_likelihoods must have shape ({self.n_models},), got {tuple(log_likelihoods.shape)}"
            )
        ll = log_likelihoods.detach().to("cpu", torch.float64).numpy()
        ll = np.where(np.isfinite(ll), ll, -np.inf)
        # numpy on CPU views of the buffers: ~10x faster than small torch ops for N ~ 10.
        w = self.log_weights.detach().cpu().numpy() + ll
        total = _logsumexp(w)
        if not np.isfinite(total):
            warnings.warn(
                "Switch.update: every model has likelihood 0 (non-finite log-likelihoods); "
                "keeping the previous posterior",
                RuntimeWarning,
                stacklevel=2,
            )
            return
        w = w - total
        filtered = _logsumexp(w, axis=0)
        t = int(self.steps) + 1
        log_alpha, log_1m_alpha = -math.log(t + 1), math.log(t / (t + 1))
        switch_in = _logsumexp(w[0]) + log_alpha - math.log(self.n_models)
        new = np.empty_like(w)
        new[0] = np.logaddexp(w[0] + log_1m_alpha, switch_in + math.log(self.theta))
        new[1] = np.logaddexp(w[1], switch_in + math.log1p(-self.theta))
        self.log_weights.copy_(torch.from_numpy(new))
        self.log_predictive.copy_(torch.from_numpy(_logsumexp(new, axis=0)))
        self.log_filtered.copy_(torch.from_numpy(filtered))
        self.steps.fill_(t)

    def extra_repr(self) -> str:
        return f"n_models={self.n_models}, theta={self.theta}"
