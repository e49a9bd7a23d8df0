"""The regression heads' Gaussian variance, following the averaged model's squared error.

With unit variance (the paper), the body's gradient is a squared error at the scale of the targets:
TD errors of tens on Pendulum blow high-rate units up. :class:`RunningVariance` gives the heads the
running mean of the averaged model's squared error instead, so the likelihood is scale-free:

.. math::  \\sigma^2 \\leftarrow \\max(0.99\\, \\sigma^2 + 0.01\\, \\mathrm{mse},\\ 10^{-8}),
   \\qquad \\mathrm{mse} = \\frac1{M d} \\sum_b \\|y_b - \\textstyle\\sum_j a_j \\mu_j(x_b)\\|^2,

(``d`` outputs per sample: ``sigma^2`` is the variance of each output) started at the first
minibatch's ``mse``; a non-finite ``mse`` leaves it unchanged. With members
(a population), each member has its own.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

__all__ = ["RunningVariance", "running_variance"]

DECAY = 0.99
FLOOR = 1e-8


def running_variance(previous: float | None, mse: float) -> float | None:
    """One update of the heads' variance: ``max(0.99 previous + 0.01 mse, 1e-8)``.

    :param previous: the current estimate; None before the first minibatch (start at ``mse``).
    :param mse: the averaged model's mean squared error on this minibatch; a non-finite value
        leaves ``previous`` unchanged.
    """
    if not math.isfinite(mse):
        return previous
    start = mse if previous is None else previous
    return max(DECAY * start + (1.0 - DECAY) * mse, FLOOR)


class RunningVariance:
    """:func:`running_variance` for one run (``members=None``) or ``P`` members at once.

    :param members: None, or the number of members ``P``.
    :param value: the starting estimate (None: not started).

    >>> v = RunningVariance()
    >>> v.update(4.0), v.update(2.0)
    (4.0, 3.98)
    """

    def __init__(self, members: int | None = None, value: float | None = None) -> None:
        self.members = members
        self.values = np.full(1 if members is None else members, np.nan if value is None else value)

    @property
    def value(self) -> float | None:
        """The current estimate of a single run (None before the first update)."""
        v = float(self.values[0])
        return None if math.isnan(v) else v

    def update(self, mse: float | np.ndarray) -> float | np.ndarray:
        """Fold one minibatch's ``mse`` (``[P]`` with members) in; return the estimates to use now
        (1.0 where none exists yet because every ``mse`` so far was non-finite)."""
        if self.members is None:
            v = running_variance(self.value, float(mse))
            self.values[0] = math.nan if v is None else v
            return 1.0 if v is None else v
        mse = np.asarray(mse, dtype=np.float64)
        start = np.where(np.isnan(self.values), mse, self.values)
        new = np.maximum(DECAY * start + (1.0 - DECAY) * mse, FLOOR)
        self.values = np.where(np.isfinite(mse), new, self.values)
        return np.where(np.isnan(self.values), 1.0, self.values)

    def state_dict(self) -> dict[str, Any]:
        """``{"values": [...]}``: plain floats (NaN before the first update)."""
        return {"values": self.values.tolist()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        values = np.asarray(state["values"], dtype=np.float64)
        if values.shape != self.values.shape:
            raise ValueError(f"variance state has shape {values.shape}, expected {self.values.shape}")
        self.values = values
