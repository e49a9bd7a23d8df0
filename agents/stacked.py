"""Batched linear layers: ``P`` independent networks held as one, weights ``[P, out, in]``.

Used by the population engine (:mod:`agents.population`: one member per run) and by the twin critics of
:mod:`agents.sb3.critic` (one member per critic). Each member computes exactly what an ``nn.Linear`` of
the same weights computes, gradients included (``dx = g W``, ``dW = g^T x``, ``db = sum_b g``), and gets
per-unit Alrao rates per member (a rule registered with :func:`alrao_rl.register_unit_rule`).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from alrao_rl import register_unit_rule

__all__ = ["StackedLinear", "load_mlp", "stacked_mlp"]


class _StackedLinearFunction(torch.autograd.Function):
    """``baddbmm(b, x, W^T)`` whose backward computes what ``nn.Linear``'s does, member by member:
    ``dx = g W``, ``dW = g^T x``, ``db = sum_b g`` (autograd's own ``bmm`` backward forms ``dW`` as
    ``(x^T g)^T``, which rounds differently), so that a member's gradients are its single run's."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
        ctx.save_for_backward(x, weight)
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor | None, ...]:
        x, weight = ctx.saved_tensors
        grad_x = torch.bmm(grad, weight) if ctx.needs_input_grad[0] else None
        grad_w = torch.bmm(grad.transpose(1, 2), x) if ctx.needs_input_grad[1] else None
        grad_b = grad.sum(dim=1) if ctx.needs_input_grad[2] else None
        return grad_x, grad_w, grad_b


class StackedLinear(nn.Module):
    """``P`` independent linear layers: ``y[k] = x[k] W_k^T + b_k`` for ``x`` ``[P, B, in]``.

    :param n_in: input features.
    :param n_out: output features.
    :param members: ``P``.
    """

    def __init__(self, n_in: int, n_out: int, members: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(members, n_out, n_in))
        self.bias = nn.Parameter(torch.zeros(members, n_out))

    def forward(self, x: Tensor) -> Tensor:
        if not torch.is_grad_enabled():
            return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))
        if self.weight.shape[0] == 1:  # one member: nn.Linear's own autograd (the same numbers, less Python)
            return nn.functional.linear(x[0], self.weight[0], self.bias[0]).unsqueeze(0)
        return _StackedLinearFunction.apply(x, self.weight, self.bias)

    @torch.no_grad()
    def load_member(self, k: int, layer: nn.Linear) -> None:
        """Copy ``layer``'s weights into member ``k``."""
        self.weight[k].copy_(layer.weight)
        self.bias[k].copy_(layer.bias)


def _stacked_rows_rule(module: nn.Module, sample: Any) -> dict[str, Tensor]:
    """Member ``k``'s unit ``i`` of a :class:`StackedLinear` (its weight row and bias share the rate)."""
    rate = sample(module.bias.numel()).view(module.bias.shape)
    return {"weight": rate.unsqueeze(2), "bias": rate}


register_unit_rule(StackedLinear, _stacked_rows_rule)


def stacked_mlp(
    sizes: Sequence[int], members: int, activate_last: bool, activation_fn: type[nn.Module] = nn.ReLU
) -> nn.Sequential:
    """``StackedLinear`` layers of the widths ``sizes`` with ``activation_fn`` between them (and after the last
    when ``activate_last``)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(itertools.pairwise(sizes)):
        layers.append(StackedLinear(a, b, members))
        if activate_last or i < len(sizes) - 2:
            layers.append(activation_fn())
    return nn.Sequential(*layers)


def load_mlp(stacked: nn.Sequential, k: int, single: nn.Module) -> None:
    """Copy the ``nn.Linear`` layers of ``single`` (in order) into member ``k`` of ``stacked``."""
    targets = [m for m in stacked if isinstance(m, StackedLinear)]
    sources = [m for m in single.modules() if isinstance(m, nn.Linear)]
    for target, source in zip(targets, sources, strict=True):
        target.load_member(k, source)
