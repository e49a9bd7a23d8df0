"""The Alrao loss, with the gradients of Algorithm 1 written in closed form.

Each head ``j`` is a probabilistic model of the target:

* ``classification``: head ``j`` outputs logits ``s_j``; ``p_j(y) = softmax(s_j)_y``.
* ``regression``: head ``j`` is a Gaussian with mean ``mu_j`` and covariance ``sigma^2 I`` over
  the output vector (the paper's RL setup, Appendix D, has ``sigma^2 = 1``):
  ``log p_j(y) = -||y - mu_j||^2 / (2 sigma^2) - d/2 log(2 pi sigma^2)``; after :meth:`AlraoOutput.gather` the
  output is the one selected scalar (``d = 1``).

Every leading dimension indexes samples ``b = 1..M``. With averaging weights ``a_j``, the
responsibilities ``q_jb = a_j p_j(y_b) / sum_k a_k p_k(y_b)`` and ``u_jb`` the head outputs:

.. math::
   L_{mix} = -\\frac1M \\sum_b \\log \\sum_j a_j\\, p_j(y_b), \\qquad
   L_j = -\\frac1M \\sum_b \\log p_j(y_b),

   \\frac{\\partial L_{mix}}{\\partial u_{jb}} = q_{jb}\\, g_{jb}, \\qquad
   \\frac{\\partial L_j}{\\partial u_{jb}} = g_{jb}, \\qquad
   g_{jb} = \\frac1M \\cdot \\begin{cases} p_j(\\cdot\\,|x_b) - e_{y_b} & \\text{classification}\\\\
   \\mu_{jb} - y_b & \\text{regression.}\\end{cases}

Algorithm 1 gives the body ``dL_mix/dz = sum_j (q_j g_j) W_j`` (line 12) and head ``j``
``dL_j/dW_j = g_j^T z`` (line 15, ``z`` held fixed); both are computed here in one backward
pass with two matmuls, the same work as a plain ``nn.Linear`` with ``N * out`` outputs.

The value of the returned loss is ``L_mix``, the negative log-likelihood of the averaged model.
"""

from __future__ import annotations

import math
import warnings
from typing import Any, Literal

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx

__all__ = ["TASKS", "Task", "alrao_loss", "check_target", "curvature_trace"]

Task = Literal["classification", "regression"]
TASKS: tuple[str, ...] = ("classification", "regression")

_LOG_2PI = math.log(2.0 * math.pi)


class _AlraoLoss(torch.autograd.Function):
    """``(L_mix, ll)`` from the body output; gradients to ``z`` (mixture) and heads (own).

    Tensors are laid out ``[M, N, out]`` (samples, heads, outputs) so that the ``[M, N*out]``
    matrix of the heads' matmul is a view. At DQN sizes each torch call costs more than its
    arithmetic, so the code keeps their number small; ``g`` (see the module docstring) is formed
    in ``backward`` from what ``forward`` saved.
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        z: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        values: Tensor,
        index: Tensor | None,
        target: Tensor,
        log_weights: Tensor,
        finite: Tensor | None,
        task: str,
        variance: float,
        head_scale: Tensor | None,
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        n_heads, n_out, n_in = weight.shape
        m = z.numel() // n_in  # samples
        lw = log_weights if log_weights.dtype == values.dtype else log_weights.to(values.dtype)
        if task == "classification":
            saved = torch.log_softmax(values.reshape(m, n_heads, n_out), dim=2)  # log p_j(. | x_b)
            ll = saved.gather(2, target.reshape(m, 1, 1).expand(m, n_heads, 1)).squeeze(2)  # [M, N]
        else:
            if index is None:
                diff = values.reshape(m, n_heads, n_out) - target.reshape(m, 1, n_out)  # mu - y
                sq, dim = diff.square().sum(dim=2), n_out
            else:
                diff = (values if values.dim() == 2 else values.reshape(m, n_heads)) - target.reshape(m, 1)
                sq, dim = diff.square(), 1
            ll = sq.mul_(-0.5 / variance).sub_(0.5 * dim * (_LOG_2PI + math.log(variance)))
            saved = diff  # g = (mu - y) / sigma^2, the 1/sigma^2 is applied in backward
        head_ll = ll.mean(dim=0)
        usable, any_usable = None, True
        if finite is not None or not math.isfinite(float(head_ll.sum())):
            # Rare path: leave out heads with non-finite outputs or likelihoods.
            usable = torch.isfinite(ll).all(dim=0)
            if finite is not None:
                usable &= finite
            ll = torch.where(usable, ll, 0.0)
            lw = torch.where(usable, lw, -math.inf)
            any_usable = bool(usable.any())
            if any_usable:
                lw = lw - torch.logsumexp(lw, dim=0)
            head_ll = torch.where(usable, head_ll, -math.inf)
            ctx.mark_non_differentiable(usable)
        joint = ll + lw  # log a_j p_j(y_b)
        if any_usable:
            # log sum_j a_j p_j(y_b) and the responsibilities q_jb, as logsumexp and softmax do
            top = joint.amax(dim=1, keepdim=True)
            q = joint.sub_(top).exp_()
            total = q.sum(dim=1, keepdim=True)
            q.div_(total)
            loss = total.log_().add_(top).mean().neg_()
        else:
            loss, q = joint.new_tensor(math.inf), torch.zeros_like(joint)
        ctx.save_for_backward(z, weight, saved, q, target, index, usable, head_scale)
        ctx.task = task
        ctx.scale = 1.0 / m if task == "classification" else 1.0 / (m * variance)
        ctx.has_bias = bias is not None
        ctx.mark_non_differentiable(head_ll)
        ctx.set_materialize_grads(False)
        return loss, head_ll, usable

    @staticmethod
    def backward(ctx: Any, grad_loss: Tensor | None, *_: Tensor | None) -> tuple[Tensor | None, ...]:
        if grad_loss is None:  # (grads are not materialized) nothing flows back
            return (None,) * 11
        z, weight, saved, q, target, index, usable, head_scale = ctx.saved_tensors
        n_heads, n_out, n_in = weight.shape
        m = q.shape[0]
        scale = grad_loss * ctx.scale
        # g[b, j] = d(-log p_j(y_b))/du_bj, for the selected output(s); the factor `scale` (grad / M,
        # and 1/sigma^2) multiplies whichever side is smaller: g itself when it is [M, N] (one
        # selected output), else the responsibilities q and the [N*out, in] products.
        if ctx.task == "classification":
            y = target.reshape(m, 1, 1).expand(m, n_heads, 1)
            g = saved.exp().scatter_add_(2, y, saved.new_full(y.shape, -1.0))
        else:
            g = saved if index is None else saved * scale
        flat_w = weight.view(n_heads * n_out, n_in)
        if usable is not None:
            g = torch.where(usable.view(n_heads, *([1] * (g.dim() - 2))), g, 0.0)
            # a left-out head's inf/NaN weights must not reach dz (0 * inf = NaN)
            flat_w = torch.where(usable.repeat_interleave(n_out).unsqueeze(1), flat_w, 0.0)
        if index is None:
            g_mix = (g * (q * scale).unsqueeze(2)).view(m, n_heads * n_out)
            g = g.view(m, n_heads * n_out)
        else:  # scatter the selected outputs' factors (own and mixture's at once) into [M, N*out]
            selected = torch.stack((g, g * q)).unsqueeze_(3)
            idx = index.reshape(1, m, 1, 1).expand(2, m, n_heads, 1)
            both = selected.new_zeros(2, m, n_heads * n_out)
            both.view(2, m, n_heads, n_out).scatter_(3, idx, selected)
            g, g_mix = both.unbind(0)
        grad_z = grad_w = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_z = g_mix.mm(flat_w)
            if z.dim() != 2:
                grad_z = grad_z.view(z.shape)
        # the heads' own step: g's factor (the 1/M ... of `scale` unless already in g), times the
        # normalization of a "normalized" head step
        own = scale if index is None else None
        if head_scale is not None:
            own = head_scale if own is None else own * head_scale
        if ctx.needs_input_grad[1]:
            grad_w = g.t().mm(z if z.dim() == 2 else z.reshape(m, n_in)).view(n_heads, n_out, n_in)
            if own is not None:
                grad_w.mul_(own)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            grad_b = g.sum(dim=0).view(n_heads, n_out)
            if own is not None:
                grad_b.mul_(own)
        return grad_z, grad_w, grad_b, None, None, None, None, None, None, None, None


def alrao_loss(
    z: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    values: Tensor,
    index: Tensor | None,
    target: Tensor,
    log_weights: Tensor,
    finite: Tensor | None,
    task: Task,
    variance: float = 1.0,
    normalized: bool = False,
) -> tuple[Tensor, Tensor]:
    """The Alrao loss of one minibatch and each head's minibatch-mean log-likelihood.

    Prefer :meth:`alrao_rl.AlraoModel.loss`, which fills these arguments from a forward pass (and
    marks the heads left out as dead).

    Heads whose outputs are not all finite, or whose log-likelihood is not (an output so large
    that its squared error overflows), are *unusable*: left out of the mixture (the others
    renormalized), given no gradient, and reported with log-likelihood ``-inf`` (likelihood 0
    for the switch). If no head is usable the loss is ``+inf`` with zero gradients and a warning.

    :param z: the body's output ``[*lead, in]`` (differentiable).
    :param weight: heads' weight ``[N, out, in]``.
    :param bias: heads' bias ``[N, out]`` or None.
    :param values: head outputs computed from ``z`` (no gradient): ``[*lead, N, out]``
        (``[*lead, N]`` with ``index``).
    :param index: for regression on one selected output per sample, its index ``[*lead]``.
    :param target: class indices ``[*lead]``, or regression targets ``[*lead, out]`` (``[*lead]``
        with ``index``).
    :param log_weights: the averaging weights ``log a_j`` ``[N]``.
    :param finite: ``[N]`` bool, heads whose outputs are all finite (None: all are).
    :param task: ``"classification"`` or ``"regression"``.
    :param variance: regression only: the heads' Gaussian variance ``sigma^2`` (the paper: 1).
    :param normalized: divide each head's own gradient by the trace of its curvature (the
        ``"normalized"`` head step of :class:`alrao_rl.AlraoModel`): ``sigma^2 / E_b ||[z_b, 1]||^2``
        for regression, ``1 / E_b ||[z_b, 1]||^2`` for classification.
    :return: ``(loss, head_ll)``: the scalar to ``backward()`` and the ``[N]`` detached
        minibatch-mean log-likelihoods for :meth:`alrao_rl.Switch.update`.
    """
    args = (z, weight, bias, values, index, target, log_weights, finite, task, variance, normalized)
    loss, head_ll, _ = _alrao_loss(*args)
    return loss, head_ll


def curvature_trace(z: Tensor, bias: bool, members: bool = False) -> Tensor:
    """``E_b ||[z_b, 1]||^2``: the trace of the heads' input Gram matrix ``E_b [z_b, 1][z_b, 1]^T``
    (the ``1`` when the heads have a bias), a scalar (``[P]`` with members, ``z`` ``[P, ..., d]``).

    It bounds the Gram matrix's largest eigenvalue, which sets how fast (and whether stably) a
    head's gradient step moves its outputs: see the ``head_step`` of :class:`alrao_rl.AlraoModel`.
    """
    if members:
        z3 = z.reshape(z.shape[0], -1, z.shape[-1])
        trace = z3.square().sum(dim=(1, 2)).div_(z3.shape[1])
    else:
        trace = z.square().sum().div_(z.numel() // z.shape[-1])
    return trace.add_(1.0) if bias else trace


def check_target(z: Tensor, target: Tensor, index: Tensor | None, task: str, n_out: int) -> Tensor:
    """``target`` checked against the body output ``z`` (class indices become int64).

    :raises ValueError: the shape is not ``z``'s leading shape (with ``[out]`` for regression
        without ``index``).
    :raises TypeError: classification targets that are not integers.
    """
    lead = z.shape[:-1]
    if not isinstance(target, Tensor):
        raise TypeError(f"target must be a Tensor, got {type(target).__name__}")
    if task == "classification":
        if target.shape != lead:
            raise ValueError(
                f"classification target shape {tuple(target.shape)} must be the outputs' leading shape "
                f"{tuple(lead)}"
            )
        if target.dtype not in (torch.int64, torch.int32, torch.int16, torch.uint8):
            raise TypeError(f"classification target must hold class indices (int), got {target.dtype}")
        return target.long()
    expected = lead if index is not None else (*lead, n_out)
    if target.shape != expected:
        raise ValueError(f"regression target shape {tuple(target.shape)} must be {tuple(expected)}")
    return target


def _alrao_loss(
    z: Tensor,
    weight: Tensor,
    bias: Tensor | None,
    values: Tensor,
    index: Tensor | None,
    target: Tensor,
    log_weights: Tensor,
    finite: Tensor | None,
    task: Task,
    variance: float = 1.0,
    normalized: bool = False,
) -> tuple[Tensor, Tensor, Tensor | None]:
    """:func:`alrao_loss`, and the ``[N]`` bool mask of the heads that were usable (None when
    all were)."""
    target = check_target(z, target, index, task, weight.shape[1])
    if finite is not None and bool(finite.all()):
        finite = None
    if not (isinstance(variance, (int, float)) and math.isfinite(variance) and variance > 0):
        raise ValueError(f"variance must be a finite number > 0, got {variance!r}")
    head_scale = None
    if normalized:
        head_scale = curvature_trace(z.detach(), bias is not None).reciprocal_()
        if task == "regression":
            head_scale.mul_(float(variance))
    loss, head_ll, usable = _AlraoLoss.apply(
        z, weight, bias, values, index, target, log_weights, finite, task, float(variance), head_scale
    )
    if usable is not None and not bool(usable.any()):
        warnings.warn(
            "alrao_loss: no head has a finite likelihood on this batch (the body diverged?); "
            "the loss is inf and no parameter gets a gradient",
            RuntimeWarning,
            stacklevel=3,
        )
    return loss, head_ll, usable
