"""PopArt: regression targets rescaled adaptively, the heads' outputs preserved (van Hasselt et al. 2016).

A regression head with a fixed rate has no fixed meaning when the targets' scale is unknown: to output
Q-values of hundreds from a small initialization, either the heads' weights or the body's features have
to grow by that factor, and a body with per-unit rates up to ``eta_max`` grows its features first (the
heads' input curvature, which sets every head's effective step, then slides by orders of magnitude).
:class:`PopArt` lets the heads predict the *rescaled* target ``y / s`` and maps their outputs back as
``s u``, with ``s`` the running root mean square of the targets:

.. math::
   \\beta_t = \\beta / (1 - (1 - \\beta)^t) \\quad\\text{(debiased: } \\beta_1 = 1\\text{)}, \\qquad
   \\nu_t = (1 - \\beta_t)\\, \\nu_{t-1} + \\beta_t\\, \\overline{y^2}, \\qquad
   s_t = \\sqrt{\\max(\\nu_t,\\ 10^{-8})},

and, so that no output changes when ``s`` does ("Preserving Outputs Precisely"), every head is
rescaled at the same time: ``(W_j, b_j) <- (s_{t-1} / s_t) (W_j, b_j)``. Unlike the paper's PopArt, the
targets are not centred: TD targets often start all equal (CartPole's are ``1 + gamma Q ~ 1``), and a
standard deviation near 0 would blow their deviations up; the root mean square is the scale the
heads' outputs must reach, and the bias fits the mean.

The map is linear and the same for every copy of the heads, so it commutes with a target network's
Polyak average: rescaling the online and the target heads together keeps the target the average
it was. Dead heads (zeroed and frozen) are left as they are. With ``members=P`` each member of a
population has its own scale.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from .heads import AlraoHeads
from .switch import _NUMPY_DTYPES

__all__ = ["PopArt"]

FLOOR = 1e-8
"""The smallest mean square ``nu`` (targets that are all 0 still give a finite scale, ``1e-4``)."""


class PopArt:
    """The running scale of regression targets and the output-preserving rescaling of the heads.

    Its state is two float64 numpy arrays (``[P]`` with members; plain lists in :meth:`state_dict`, as
    :class:`alrao_rl.RunningVariance`): ``second``, the debiased running mean of ``y^2`` (1 before any
    target: the identity), and ``decay = (1 - beta)^t`` after ``t`` updates (kept as a product, exact
    member by member).

    :param beta: the running mean's step size (after debiasing), in (0, 1].
    :param members: None for one run, or the number ``P`` of members of a population.

    >>> from torch import nn
    >>> popart = PopArt(beta=0.5)
    >>> heads = AlraoHeads(nn.Linear(3, 1), n_heads=2)
    >>> z = torch.ones(4, 3)
    >>> with torch.no_grad():
    ...     before = popart.denormalize(heads(z))
    ...     y_hat = popart.update(torch.tensor([10.0, 20.0, 30.0, 40.0]), [heads])
    ...     torch.allclose(popart.denormalize(heads(z)), before, atol=1e-5)
    True
    >>> [round(v, 3) for v in y_hat.tolist()]
    [0.365, 0.73, 1.095, 1.461]
    """

    def __init__(self, beta: float = 1e-3, members: int | None = None) -> None:
        if isinstance(beta, bool) or not isinstance(beta, (int, float)) or not 0.0 < beta <= 1.0:
            raise ValueError(f"beta must be in (0, 1], got {beta!r}")
        if members is not None and (isinstance(members, bool) or not isinstance(members, int) or members < 1):
            raise ValueError(f"members must be None or an int >= 1, got {members!r}")
        self.beta = float(beta)
        self.members = members
        self.second = np.ones(members or 1)
        self.decay = np.ones(members or 1)
        self._scale = np.ones(members or 1)
        self._tensors: dict[tuple, Tensor] = {}  # s as a tensor per (dtype, device, dims), until s changes

    @property
    def scale(self) -> np.ndarray:
        """``s = sqrt(max(nu, 1e-8))``, float64 ``[P]`` (``[1]`` for one run); 1 before any target."""
        return self._scale

    def _lead(self, values: Tensor) -> Tensor:
        """``s`` as a tensor of ``values``' dtype shaped to broadcast against them (``[P, ...]`` with members),
        made once per scale (acting reads it at every environment step)."""
        key = (values.dtype, values.device, values.dim())
        scale = self._tensors.get(key)
        if scale is None:
            scale = torch.from_numpy(self._scale.astype(_NUMPY_DTYPES.get(values.dtype, np.float64)))
            shape = () if self.members is None else (self.members,) + (1,) * (values.dim() - 1)
            scale = scale.to(values.device).view(shape)
            self._tensors[key] = scale
        return scale

    def normalize(self, y: Tensor) -> Tensor:
        """``y / s``: targets in the heads' units."""
        return y / self._lead(y)

    def denormalize(self, values: Tensor) -> Tensor:
        """``s u``: the heads' outputs (or their average) in the targets' units."""
        return values * self._lead(values)

    @torch.no_grad()
    def update(self, y: Tensor, heads: Sequence[AlraoHeads]) -> Tensor:
        """Fold a minibatch of targets into the scale, rescale ``heads`` so that their outputs in the
        targets' units are unchanged, and return the rescaled targets.

        The ``[P]`` statistics are numpy arithmetic (a few calls of a microsecond, elementwise and
        correctly rounded: a member's numbers are its single run's); the heads take one in-place
        product per parameter.

        :param y: targets in their own units, ``[B, ...]`` (``[P, B, ...]`` with members). A member whose
            targets are not all finite keeps its scale (its batch trains nothing anyway).
        :param heads: every copy of the heads whose outputs this scale maps back (e.g. a DQN's online
            and target heads).
        :return: ``y / s_t`` with the new scale.
        """
        p = self.members or 1
        if self.members is not None and (y.dim() == 0 or y.shape[0] != p):
            raise ValueError(f"y must have a leading dimension of {p} members, got {tuple(y.shape)}")
        flat = y.detach().cpu().numpy().reshape(p, -1).astype(np.float64)
        mean_square = (flat * flat).sum(axis=1) / flat.shape[1]
        old = self._scale
        if np.isfinite(mean_square).all():
            self.decay *= 1.0 - self.beta
            self.second += self.beta / (1.0 - self.decay) * (mean_square - self.second)
        else:  # rare: the members with non-finite targets keep their statistics
            finite = np.isfinite(mean_square)
            self.decay *= np.where(finite, 1.0 - self.beta, 1.0)
            rate = np.where(finite, self.beta / (1.0 - self.decay), 0.0)
            self.second += rate * (np.where(finite, mean_square, 0.0) - self.second)
        self._scale = np.sqrt(np.maximum(self.second, FLOOR))
        self._tensors.clear()
        factor = old / self._scale
        for h in heads:
            _rescale(h, factor)
        return self.normalize(y)

    def state_dict(self) -> dict[str, Any]:
        """``{"second": [...], "decay": [...]}``: plain floats."""
        return {"second": self.second.tolist(), "decay": self.decay.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        second = np.asarray(state["second"], dtype=np.float64)
        decay = np.asarray(state["decay"], dtype=np.float64)
        if second.shape != self.second.shape or decay.shape != self.decay.shape:
            raise ValueError(f"PopArt state has shapes {second.shape} and {decay.shape}, expected {self.second.shape}")
        self.second, self.decay = second, decay
        self._scale = np.sqrt(np.maximum(second, FLOOR))
        self._tensors.clear()

    def __repr__(self) -> str:
        members = "" if self.members is None else f", members={self.members}"
        return f"PopArt(beta={self.beta}{members})"


def _rescale(heads: AlraoHeads, factor: np.ndarray) -> None:
    """``(W, b) <- factor (W, b)`` per member (``factor``: float64 ``[P]``), dead heads left as they are."""
    p, n = factor.shape[0], heads.n_heads
    if (heads.members or 1) != p:
        raise ValueError(f"heads hold {heads.members} members, the scale {p}")
    weight, bias = heads.weight, heads.bias
    per_head = np.repeat(factor.astype(_NUMPY_DTYPES[weight.dtype]), n).reshape(p, n, 1)
    if heads.any_dead:
        per_head[heads.dead.cpu().numpy().reshape(p, n)] = 1.0
    f = torch.from_numpy(per_head)
    if weight.device.type != "cpu":
        f = f.to(weight.device)
    weight.detach().view(p, n, -1).mul_(f)
    if bias is not None:
        bias.detach().view(p, n, -1).mul_(f)
