"""The Alrao output layer: ``N`` copies of a linear layer held as one batched parameter.

All heads are computed by one matrix product with the ``[N*out, in]`` view of the weight. Their
gradients are not computed by autograd through this layer: :mod:`alrao_rl.losses` writes them in
closed form (the body gets the mixture's gradient, each head its own loss's), which is what makes
an Alrao step cost about as much as a plain one.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from .rates import RateSampler, register_unit_rule

__all__ = ["AlraoHeads"]


class AlraoHeads(nn.Module):
    """``n_heads`` independent copies of ``head``, as ``weight [N, out, in]`` and ``bias [N, out]``.

    Every head starts as an exact copy of ``head`` (no extra randomness); they differ by their
    learning rates, the deterministic log-spaced ``eta_j`` of Algorithm 1, line 7 (its rate rule is
    registered with :func:`alrao_rl.register_unit_rule`).

    :param head: the output layer to copy; must be an ``nn.Linear``.
    :param n_heads: number of copies ``N`` (>= 1).

    **Dead heads.** A head whose likelihood cannot be represented any more (non-finite outputs, or
    a Gaussian log-likelihood that overflows to ``-inf``: its mean is ~1e19 away from the target)
    has diverged for good. :meth:`alrao_rl.AlraoModel.loss` leaves it out and marks it with
    :meth:`mark_dead` (the buffer ``dead``, saved with the model); from then on the loss reports
    its likelihood as 0 (``-inf``) to the switch, so the filtered posterior keeps it at weight 0,
    and the Alrao optimizers zero and freeze it at their next step, like a runaway body unit (rate,
    weights and buffers set to 0): no later step pays for its overflowing outputs, and where it
    still has weight (the predictive posterior's floor) it predicts 0, not 1e19.
    (Under DDP the supervised trainer only leaves such a head out: a head dead on one rank's shard
    must not be zeroed on that rank alone.)

    **Dead features.** A feature of the body's output that is not finite (a body unit overflowed)
    is the body's fault, not the heads': it is marked in the buffer ``dead_features`` ``[in]`` and
    from then on replaced by 0 before the heads, so it neither poisons the heads' outputs nor gets a
    gradient (the body unit that computes it no longer learns).

    **Members.** With ``members=P`` the layer holds ``P`` independent copies of the ``N`` heads
    (``weight [P, N, out, in]``, ``dead [P, N]``, ``dead_features [P, in]``), one per member of a
    population of runs trained together; its input then has a leading member dimension.

    :param members: None, or the number ``P`` of members.
    """

    def __init__(self, head: nn.Linear, n_heads: int, members: int | None = None) -> None:
        super().__init__()
        if not isinstance(head, nn.Linear):
            raise TypeError(f"head must be an nn.Linear, got {type(head).__name__}")
        if isinstance(n_heads, bool) or not isinstance(n_heads, int):
            raise TypeError(f"n_heads must be an int, got {type(n_heads).__name__} ({n_heads!r})")
        if n_heads < 1:
            raise ValueError(f"n_heads must be >= 1, got {n_heads}")
        if members is not None and (isinstance(members, bool) or not isinstance(members, int) or members < 1):
            raise ValueError(f"members must be None or an int >= 1, got {members!r}")
        self.n_heads = n_heads
        self.members = members
        self.in_features = head.in_features
        self.out_features = head.out_features
        copies = (n_heads,) if members is None else (members, n_heads)
        self.weight = nn.Parameter(head.weight.detach().expand(*copies, -1, -1).clone())
        if head.bias is not None:
            self.bias = nn.Parameter(head.bias.detach().expand(*copies, -1).clone())
        else:
            self.register_parameter("bias", None)
        lead = copies[:-1]
        self.register_buffer("dead", torch.zeros(copies, dtype=torch.bool))
        self.register_buffer("dead_features", torch.zeros(*lead, head.in_features, dtype=torch.bool))
        self.any_dead = False  # bool(dead.any()), kept without a sync per step
        self.any_dead_feature = False  # bool(dead_features.any())
        self._to_freeze: Tensor | None = None

    def mark_dead(self, dead: Tensor) -> None:
        """Mark the heads where ``dead`` ``[N]`` (``[P, N]``) is True as dead for good, and ask the
        Alrao optimizer to zero and freeze them at its next step (masks accumulate until then)."""
        dead = dead.detach().to(device=self.dead.device, dtype=torch.bool)
        self.dead |= dead
        self.any_dead = bool(self.dead.any())
        self._to_freeze = dead if self._to_freeze is None else self._to_freeze | dead

    def mark_dead_features(self, dead: Tensor) -> None:
        """Mark the input features where ``dead`` ``[in]`` (``[P, in]``) is True as dead for good."""
        self.dead_features |= dead.detach().to(device=self.dead_features.device, dtype=torch.bool)
        self.any_dead_feature = bool(self.dead_features.any())

    def mask_features(self, z: Tensor) -> Tensor:
        """``z`` with the dead features replaced by 0 (``z`` itself when none is dead)."""
        if not self.any_dead_feature:
            return z
        dead = self.dead_features
        if self.members is not None:
            dead = dead.view(dead.shape[0], *([1] * (z.dim() - 2)), dead.shape[1])
        return z.masked_fill(dead, 0.0)

    def take_dead(self) -> Tensor | None:
        """The heads marked dead since the last call (None if none), and forget them."""
        dead = self._to_freeze
        if dead is not None:
            self._to_freeze = None
        return dead

    def _load_from_state_dict(self, state_dict: dict, prefix: str, *args: Any, **kwargs: Any) -> None:
        # Models saved before dead heads (or features) existed lack their buffer: none is dead.
        state_dict.setdefault(prefix + "dead", torch.zeros_like(self.dead))
        state_dict.setdefault(prefix + "dead_features", torch.zeros_like(self.dead_features))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.any_dead = bool(self.dead.any())
        self.any_dead_feature = bool(self.dead_features.any())

    def forward(self, z: Tensor) -> Tensor:
        """Every head on ``z`` ``[..., in]``, by one matmul: ``[..., N, out]`` (heads second to last,
        so the ``[N*out]`` columns of the matmul are the heads' outputs without a copy). With
        members, ``z`` is ``[P, ..., in]`` and the result ``[P, ..., N, out]``. Dead features are
        not masked here (see :meth:`mask_features`)."""
        if z.shape[-1] != self.in_features:
            raise ValueError(f"body output has {z.shape[-1]} features, the heads expect {self.in_features}")
        n, out, bias = self.n_heads, self.out_features, self.bias
        if self.members is None:
            flat_w = self.weight.view(n * out, self.in_features)
            y = nn.functional.linear(z, flat_w, None if bias is None else bias.view(n * out))
            return y.view(*z.shape[:-1], n, out)
        p = self.members
        if z.shape[0] != p:
            raise ValueError(f"body output has {z.shape[0]} members, the heads expect {p}")
        z3 = z.reshape(p, -1, self.in_features)
        w3 = self.weight.view(p, n * out, self.in_features).transpose(1, 2)
        y = torch.bmm(z3, w3) if bias is None else torch.baddbmm(bias.view(p, 1, n * out), z3, w3)
        return y.view(*z.shape[:-1], n, out)

    def extra_repr(self) -> str:
        members = "" if self.members is None else f", members={self.members}"
        return (
            f"n_heads={self.n_heads}, in_features={self.in_features}, "
            f"out_features={self.out_features}, bias={self.bias is not None}{members}"
        )


def _heads_rule(module: nn.Module, sample: RateSampler) -> dict[str, Tensor]:
    """Head ``j`` (all of its weights and biases) gets the log-spaced rate ``eta_j``; with members,
    each member has its own copy (so that one member's head can be frozen alone)."""
    rate = sample.spaced(module.n_heads)
    if module.members is not None:
        rate = rate.expand(module.members, -1).clone()
    rates = {"weight": rate[..., None, None]}
    if module.bias is not None:
        rates["bias"] = rate[..., None]
    return rates


register_unit_rule(AlraoHeads, _heads_rule)
