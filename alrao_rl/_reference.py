"""Slow, literal versions of Alrao, written from the paper's formulas, to test the fast code against.

Nothing here is fast or meant for training: one head at a time, one ``backward`` per head, Python
loops over parameters, the switch by enumerating every hidden path. Each function is the
formula it names, in the paper's symbols.
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

__all__ = [
    "reference_adam_update",
    "reference_alrao_step",
    "reference_head_log_likelihood",
    "reference_sgd_update",
    "reference_switch_posteriors",
]


def reference_head_log_likelihood(output: Tensor, target: Tensor, task: str, variance: float = 1.0) -> Tensor:
    """``log p(y_b)`` for one head, per sample ``b`` (float64 ``[B]``).

    Classification: ``output`` are logits ``[B, C]``, ``p = softmax``. Regression: ``output`` is the
    mean ``[B, ...]`` of a Gaussian with covariance ``variance * I``.
    """
    if task == "classification":
        p = torch.softmax(output.double(), dim=-1)
        return torch.log(p[torch.arange(len(target)), target])
    diff = (output.double() - target.double()).reshape(len(target), -1)
    d = diff.shape[1]
    density = torch.exp(-0.5 * (diff**2).sum(1) / variance) / (2 * math.pi * variance) ** (d / 2)
    return torch.log(density)


def reference_alrao_step(
    body: nn.Module,
    heads: list[nn.Linear],
    a: Tensor,
    body_rates: dict[str, Tensor],
    head_rates: Tensor,
    x: Tensor,
    y: Tensor,
    task: str,
    variance: float = 1.0,
    head_step: str = "plain",
) -> Tensor:
    """One plain-SGD Alrao step (Algorithm 1, lines 10-16), in place; returns ``ll_j`` ``[N]``.

    * line 12: ``theta_{l,i} <- theta_{l,i} - eta_{l,i} grad l(Phi^Alrao(x), y)`` where
      ``Phi^Alrao(x) = sum_j a_j C_j(phi(x))`` and ``l`` is the negative log of that mixture's
      probability (density) of ``y``;
    * line 15: ``theta_j <- theta_j - eta_j grad l(C_j(z), y)`` with ``z = phi(x)`` fixed, one
      backward per head;
    * the switch's input (line 17): ``ll_j = mean_b log p_j(y_b)``.

    ``head_step="normalized"`` divides line 15's gradient by ``tr F``, the trace of the heads' input
    Gram matrix ``F = (1/M) sum_b [z_b, 1][z_b, 1]^T`` divided by ``variance`` (regression).
    """
    z = body(x)
    # line 12: the body's gradient of the mixture negative log-likelihood.
    densities = [torch.exp(reference_head_log_likelihood(h(z), y, task, variance)) for h in heads]
    mixture_density = sum(a[j] * p_j for j, p_j in enumerate(densities))
    mixture_nll = -torch.log(mixture_density).mean()
    body_params = dict(body.named_parameters())
    grads = torch.autograd.grad(mixture_nll, list(body_params.values()))
    # line 15: each head on its own loss, z detached.
    z_fixed = z.detach()
    head_grads, lls = [], []
    for h in heads:
        ll = reference_head_log_likelihood(h(z_fixed), y, task, variance)
        lls.append(ll.mean())
        head_grads.append(torch.autograd.grad(-ll.mean(), list(h.parameters())))
    scale = 1.0
    if head_step == "normalized":
        z_tilde = torch.cat([z_fixed.reshape(-1, z_fixed.shape[-1]), torch.ones(len(y), 1, dtype=z_fixed.dtype)], 1)
        if heads[0].bias is None:
            z_tilde = z_tilde[:, :-1]
        fisher = z_tilde.T @ z_tilde / len(z_tilde)
        if task == "regression":
            fisher = fisher / variance
        scale = 1.0 / float(torch.trace(fisher))
    with torch.no_grad():
        for (name, p), g in zip(body_params.items(), grads, strict=True):
            p -= (body_rates[name].double() * g.double()).to(p.dtype)
        for eta_j, h, gs in zip(head_rates.tolist(), heads, head_grads, strict=True):
            for p, g in zip(h.parameters(), gs, strict=True):
                p -= eta_j * scale * g
    return torch.stack(lls).detach()


def reference_sgd_update(
    p: Tensor,
    grad: Tensor,
    rate: Tensor,
    buf: Tensor | None,
    *,
    lr: float,
    momentum: float,
    dampening: float,
    weight_decay: float,
    nesterov: bool,
) -> tuple[Tensor, Tensor | None]:
    """``torch.optim.SGD``'s documented update with ``lr`` replaced by ``lr * eta`` elementwise."""
    g = grad + weight_decay * p
    if momentum != 0:
        buf = g.clone() if buf is None else momentum * buf + (1 - dampening) * g
        g = g + momentum * buf if nesterov else buf
    eta = rate.expand_as(p)
    return p - lr * eta * g, buf


def reference_adam_update(
    p: Tensor,
    grad: Tensor,
    rate: Tensor,
    m: Tensor,
    v: Tensor,
    t: int,
    *,
    lr: float,
    betas: tuple[float, float],
    eps: float,
    weight_decay: float,
) -> tuple[Tensor, Tensor, Tensor]:
    """``torch.optim.Adam``'s documented update (step ``t >= 1``) with ``lr -> lr * eta``."""
    beta1, beta2 = betas
    g = grad + weight_decay * p
    m = beta1 * m + (1 - beta1) * g
    v = beta2 * v + (1 - beta2) * g * g
    m_hat = m / (1 - beta1**t)
    v_hat = v / (1 - beta2**t)
    eta = rate.expand_as(p)
    return p - lr * eta * m_hat / (v_hat.sqrt() + eps), m, v


def reference_switch_posteriors(log_likelihoods: Tensor, theta: float) -> tuple[Tensor, Tensor]:
    """The switch posteriors after ``T`` observations, by summing over every hidden path.

    A path is ``(s_1, K_1), ..., (s_{T+1}, K_{T+1})``; its prior probability is, literally from the
    prior's description: ``P(s_1) = theta`` or ``1 - theta``, ``P(K_1) = 1/N``; and after update
    ``t``, from ``s_t = 1`` the path must stay; from ``s_t = 0`` it stays with probability
    ``1 - 1/(t+1)`` or switches with probability ``1/(t+1)`` to a uniform model, with
    ``s_{t+1} = 1`` with probability ``1 - theta``. Its likelihood is ``prod_t p_{K_t}(y_t)``.

    :param log_likelihoods: ``[T, N]`` with ``T >= 1``; ``-inf`` allowed.
    :return: ``(filtered, predictive)``: ``P(K_T = j | y_{1:T})`` and ``P(K_{T+1} = j | y_{1:T})``.
    """
    T, N = log_likelihoods.shape
    lik = torch.exp(log_likelihoods.double())
    states = [(s, k) for s in (0, 1) for k in range(N)]
    filtered = torch.zeros(N, dtype=torch.float64)
    predictive = torch.zeros(N, dtype=torch.float64)
    for path in itertools.product(states, repeat=T + 1):
        s1 = path[0][0]
        prob = (theta if s1 == 0 else 1 - theta) / N
        for t in range(1, T + 1):  # transition after update t: path[t-1] -> path[t]
            (s, k), (s_next, k_next) = path[t - 1], path[t]
            alpha = 1.0 / (t + 1)
            if s == 1:
                step = 1.0 if (s_next, k_next) == (1, k) else 0.0
            else:
                stay = (1 - alpha) if (s_next, k_next) == (0, k) else 0.0
                switch = alpha / N * (theta if s_next == 0 else 1 - theta)
                step = stay + switch
            prob *= step
            if prob == 0:
                break
        if prob == 0:
            continue
        for t in range(T):
            prob *= lik[t, path[t][1]]
        filtered[path[T - 1][1]] += prob
        predictive[path[T][1]] += prob
    return filtered / filtered.sum(), predictive / predictive.sum()
