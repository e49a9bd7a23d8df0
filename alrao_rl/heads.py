"""The Alrao output layer: ``N`` copies of a linear layer held as one batched parameter.

All heads are computed by one matrix product with a ``[N*out, in]`` weight. The layer returns the
head outputs twice, with the same values but different gradient routes (Algorithm 1, lines 12
and 15):

* ``own``: gradients reach the heads' parameters only. Head ``j``'s own loss
  ``l(C_j(z), y)`` is computed on it, so head ``j`` learns "as if it were the only head", on the
  body's output ``z`` treated as a constant.
* ``body``: gradients reach ``z`` only. The mixture loss ``l(sum_j a_j C_j(z), y)`` is computed
  on it, so the body learns from the averaged model while the heads stay out of that gradient.

Both come from one forward matmul, and their backward passes are the two matmuls a plain
``nn.Linear`` would do, so one ``backward()`` gives exactly the gradients of Algorithm 1.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn
from torch.autograd.function import FunctionCtx

from .rates import RateSampler, register_unit_rule

__all__ = ["AlraoHeads"]


class _SplitGradLinear(torch.autograd.Function):
    """``y = z W_j^T + b_j`` for every head ``j``, with the gradient routes described above."""

    @staticmethod
    def forward(
        ctx: FunctionCtx, z: Tensor, weight: Tensor, bias: Tensor | None
    ) -> tuple[Tensor, Tensor, Tensor]:
        n_heads, n_out, n_in = weight.shape
        lead = z.shape[:-1]
        z2 = z.reshape(-1, n_in)
        flat_w = weight.reshape(n_heads * n_out, n_in)
        y = torch.nn.functional.linear(z2, flat_w, None if bias is None else bias.reshape(-1))
        own = y.view(-1, n_heads, n_out).transpose(0, 1).reshape(n_heads, *lead, n_out)
        finite = torch.isfinite(own).reshape(n_heads, -1).all(dim=1)
        ctx.save_for_backward(z2, weight, finite)
        ctx.has_bias = bias is not None
        ctx.lead = lead
        ctx.mark_non_differentiable(finite)
        return own, own.clone(), finite

    @staticmethod
    def backward(
        ctx: Any, grad_own: Tensor | None, grad_body: Tensor | None, _grad_finite: Tensor | None
    ) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
        z2, weight, finite = ctx.saved_tensors
        n_heads, n_out, n_in = weight.shape
        grad_z = grad_w = grad_b = None
        if grad_body is not None and ctx.needs_input_grad[0]:
            g = grad_body.reshape(n_heads, -1, n_out).transpose(0, 1).reshape(-1, n_heads * n_out)
            flat_w = weight.reshape(n_heads * n_out, n_in)
            if not bool(finite.all()):
                # A diverged head has zero mixture gradient; keep its inf/NaN weights out of dz.
                flat_w = torch.where(finite.repeat_interleave(n_out).unsqueeze(1), flat_w, 0.0)
                g = torch.nan_to_num(g, nan=0.0, posinf=0.0, neginf=0.0)
            grad_z = (g @ flat_w).view(*ctx.lead, n_in)
        if grad_own is not None:
            g_own = grad_own.reshape(n_heads, -1, n_out)
            if ctx.needs_input_grad[1]:
                grad_w = torch.matmul(g_own.transpose(1, 2), z2)
            if ctx.has_bias and ctx.needs_input_grad[2]:
                grad_b = g_own.sum(dim=1)
        return grad_z, grad_w, grad_b


class AlraoHeads(nn.Module):
    """``n_heads`` independent copies of ``head``, as ``weight [N, out, in]`` and ``bias [N, out]``.

    Every head starts as an exact copy of ``head`` (no extra randomness); they differ by their
    learning rates, the deterministic log-spaced ``eta_j`` of Algorithm 1, line 7 (its rate rule is
    registered with :func:`alrao_rl.register_unit_rule`).

    :param head: the output layer to copy; must be an ``nn.Linear``.
    :param n_heads: number of copies ``N`` (>= 1).
    """

    def __init__(self, head: nn.Linear, n_heads: int) -> None:
        super().__init__()
        if not isinstance(head, nn.Linear):
            raise TypeError(f"head must be an nn.Linear, got {type(head).__name__}")
        if isinstance(n_heads, bool) or not isinstance(n_heads, int):
            raise TypeError(f"n_heads must be an int, got {type(n_heads).__name__} ({n_heads!r})")
        if n_heads < 1:
            raise ValueError(f"n_heads must be >= 1, got {n_heads}")
        self.n_heads = n_heads
        self.in_features = head.in_features
        self.out_features = head.out_features
        w = head.weight.detach()
        self.weight = nn.Parameter(w.unsqueeze(0).repeat(n_heads, 1, 1))
        if head.bias is not None:
            self.bias = nn.Parameter(head.bias.detach().unsqueeze(0).repeat(n_heads, 1))
        else:
            self.register_parameter("bias", None)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Compute every head on ``z`` ``[..., in]``.

        :return: ``(own, body, finite)``: head outputs ``[N, ..., out]`` routed to the heads'
            parameters, the same values routed to ``z``, and ``finite [N]`` (bool), whether each
            head's outputs are all finite.
        """
        if z.shape[-1] != self.in_features:
            raise ValueError(
                f"body output has {z.shape[-1]} features, the heads expect {self.in_features}"
            )
        return _SplitGradLinear.apply(z, self.weight, self.bias)

    def extra_repr(self) -> str:
        return (
            f"n_heads={self.n_heads}, in_features={self.in_features}, "
            f"out_features={self.out_features}, bias={self.bias is not None}"
        )


def _heads_rule(module: nn.Module, sample: RateSampler) -> dict[str, Tensor]:
    """Head ``j`` (all of its weights and biases) gets the log-spaced rate ``eta_j``."""
    rate = sample.spaced(module.n_heads)
    rates = {"weight": rate.view(-1, 1, 1)}
    if module.bias is not None:
        rates["bias"] = rate.view(-1, 1)
    return rates


register_unit_rule(AlraoHeads, _heads_rule)
