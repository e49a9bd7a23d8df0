"""Per-head log-likelihoods and the Alrao loss (Algorithm 1, lines 12, 15 and 17).

Each head ``j`` is a probabilistic model of the target:

* ``classification``: head outputs are log-probabilities ``log p_j(y | x)``; every leading
  dimension is a batch dimension, the last one is the class.
* ``regression``: head ``j`` is a Gaussian with mean ``mu_j(x)`` and variance 1 (the paper's RL
  setup, Appendix D); dimension 0 of the target indexes samples, the remaining dimensions are one
  joint observation: ``log p_j(y) = -1/2 ||y - mu_j||^2 - d/2 log(2 pi)``.

The Alrao loss of a minibatch of ``B`` samples is

.. math::
   L = \\underbrace{-\\frac1B \\sum_b \\log \\sum_j a_j\\, p_j(y_b)}_{\\text{mixture NLL: body}}
       \\; + \\; \\sum_j \\underbrace{-\\frac1B \\sum_b \\log p_j(y_b)}_{\\text{own loss: head } j}

where the mixture term only reaches the body and head ``j``'s own term only reaches head ``j``
(see :mod:`alrao_rl.heads`). Its *value* is the mixture NLL alone (the own terms are added as
``own - own.detach()``), so what you log is the loss of the averaged model.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

__all__ = ["Task", "alrao_loss", "head_log_likelihoods"]

Task = Literal["classification", "regression"]
TASKS: tuple[str, ...] = ("classification", "regression")

_LOG_2PI = math.log(2.0 * math.pi)


def head_log_likelihoods(heads: Tensor, target: Tensor, task: Task) -> Tensor:
    """``log p_j(y_b)`` for every head ``j`` and sample ``b``: shape ``[N, B]``.

    :param heads: head outputs ``[N, *target.shape]`` (regression) or ``[N, *target.shape, C]``
        log-probabilities (classification).
    :param target: regression targets, or class indices (int64).
    :param task: ``"classification"`` or ``"regression"``.
    """
    n_heads = heads.shape[0]
    if task == "classification":
        if heads.shape[1:-1] != target.shape:
            raise ValueError(
                f"classification target shape {tuple(target.shape)} does not match head outputs "
                f"{tuple(heads.shape)} (expected [N, *target.shape, n_classes])"
            )
        if target.dtype not in (torch.int64, torch.int32, torch.uint8):
            raise TypeError(f"classification target must hold class indices (int), got {target.dtype}")
        index = target.long().unsqueeze(0).unsqueeze(-1).expand(n_heads, *target.shape, 1)
        return heads.gather(-1, index).reshape(n_heads, -1)
    if heads.shape[1:] != target.shape:
        raise ValueError(
            f"regression target shape {tuple(target.shape)} does not match head outputs "
            f"{tuple(heads.shape)} (expected [N, *target.shape])"
        )
    sq = (heads - target.to(heads.dtype)).square().reshape(n_heads, target.shape[0], -1)
    return -0.5 * sq.sum(dim=2) - 0.5 * sq.shape[2] * _LOG_2PI


def alrao_loss(
    own: Tensor, body: Tensor, log_weights: Tensor, finite: Tensor, target: Tensor, task: Task
) -> tuple[Tensor, Tensor]:
    """The Alrao loss and the per-head minibatch-mean log-likelihoods for the switch.

    Heads whose outputs are not all finite (``finite[j]`` false), or whose log-likelihood is not
    (an output so large its squared error overflows), are left out of the mixture (the other
    weights renormalized) and get no gradient; their log-likelihood is reported as ``-inf``
    (likelihood 0 for the switch).

    :param own: head outputs routed to the heads' parameters, ``[N, ...]``.
    :param body: the same values routed to the body.
    :param log_weights: log averaging weights ``log a_j`` ``[N]`` (already renormalized over
        finite heads).
    :param finite: ``[N]`` bool.
    :param target: the targets (see :func:`head_log_likelihoods`).
    :param task: ``"classification"`` or ``"regression"``.
    :return: ``(loss, head_ll)``: the scalar to ``backward()`` (value: the mixture NLL) and
        ``[N]`` detached minibatch-mean log-likelihoods.
    """
    ll_own = head_log_likelihoods(own, target, task)  # [N, B]
    usable = finite & torch.isfinite(ll_own.detach()).all(dim=1)
    all_usable = bool(usable.all())
    if not all_usable:
        # Zero the outputs of unusable heads *before* the likelihood, so that no inf*0 reaches
        # a gradient, and give them weight 0 (the others renormalized).
        keep = usable.view(-1, *([1] * (own.dim() - 1)))
        own = torch.where(keep, own, 0.0)
        body = torch.where(keep, body, 0.0)
        ll_own = head_log_likelihoods(own, target, task)
        log_weights = torch.where(usable, log_weights, -math.inf)
        log_weights = log_weights - torch.logsumexp(log_weights, dim=0)
    ll_body = head_log_likelihoods(body, target, task)
    mixture_nll = -torch.logsumexp(log_weights.unsqueeze(1) + ll_body, dim=0).mean()
    own_nll = -ll_own.mean(dim=1)  # [N]
    if not all_usable:
        own_nll = torch.where(usable, own_nll, 0.0)
    own_total = own_nll.sum()
    loss = mixture_nll + (own_total - own_total.detach())
    head_ll = (-own_nll).detach()
    if not all_usable:
        head_ll = torch.where(usable, head_ll, -math.inf)
    return loss, head_ll
