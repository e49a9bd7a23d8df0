"""Discretization of continuous (``Box``) action spaces into a ``Discrete`` action set."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from numpy.typing import NDArray

MAX_DISCRETE_ACTIONS = 4096
"""Largest number of discrete actions (``n_bins ** dims``) that :class:`DiscretizeAction` will build."""


def check_n_bins(n_bins: int) -> None:
    """Validate a number of bins per action dimension.

    :param n_bins: number of evenly spaced values per action dimension.
    :raises TypeError: if ``n_bins`` is not an integer (``bool`` is refused too).
    :raises ValueError: if ``n_bins < 2``.
    """
    if isinstance(n_bins, bool) or not isinstance(n_bins, int | np.integer):
        raise TypeError(f"n_bins must be an int, got {type(n_bins).__name__} {n_bins!r}")
    if n_bins < 2:
        raise ValueError(f"n_bins must be >= 2, got n_bins={n_bins}")


class DiscretizeAction(gym.ActionWrapper[Any, int, NDArray[np.floating]], gym.utils.RecordConstructorArgs):
    """Expose a bounded ``Box`` action space as ``Discrete(n_bins ** dims)``.

    Each flattened action dimension ``d`` is discretized into
    ``np.linspace(low[d], high[d], n_bins)`` (both bounds included exactly). The discrete
    action set is the Cartesian product of these grids, indexed in C order: the last
    dimension varies fastest. Discrete action ``i`` is mapped to ``action_values[i]``,
    reshaped to the wrapped space's shape.

    The wrapper records its constructor arguments, so ``env.spec.make()`` rebuilds the
    discretized env (``gymnasium.utils.env_checker.check_env`` relies on this).

    :ivar action_values: read-only array of shape ``[n_actions, dims]`` with the
        wrapped space's dtype; row ``i`` is the continuous action sent for action ``i``.
    """

    def __init__(self, env: gym.Env[Any, Any], n_bins: int = 5) -> None:
        """Wrap ``env`` and build its discrete action set.

        :param env: environment whose action space is a ``Box`` with finite bounds and a
            floating dtype.
        :param n_bins: number of evenly spaced values per action dimension (>= 2).
        :raises TypeError: if ``n_bins`` is not an integer.
        :raises ValueError: if ``n_bins < 2``, if the action space is not a floating ``Box``,
            if a bound is infinite, or if ``n_bins ** dims`` exceeds :data:`MAX_DISCRETE_ACTIONS`.
        """
        check_n_bins(n_bins)
        space = env.action_space
        if not isinstance(space, gym.spaces.Box) or not np.issubdtype(space.dtype, np.floating):
            raise ValueError(f"DiscretizeAction needs a floating-point Box action space, got {space}")
        low = space.low.astype(np.float64).ravel()
        high = space.high.astype(np.float64).ravel()
        if not (np.all(np.isfinite(low)) and np.all(np.isfinite(high))):
            raise ValueError(f"Cannot discretize action space {space}: its bounds must be finite")
        n_actions = int(n_bins) ** low.size
        if n_actions > MAX_DISCRETE_ACTIONS:
            raise ValueError(
                f"Discretizing action space {space} with n_bins={n_bins} gives {n_actions} actions, "
                f"more than the limit of {MAX_DISCRETE_ACTIONS}"
            )
        gym.utils.RecordConstructorArgs.__init__(self, n_bins=n_bins)
        gym.ActionWrapper.__init__(self, env)
        grids = [np.linspace(lo, hi, n_bins) for lo, hi in zip(low, high, strict=True)]
        values = np.stack(np.meshgrid(*grids, indexing="ij"), axis=-1).reshape(n_actions, low.size)
        self.action_values: NDArray[np.floating] = values.astype(space.dtype)
        self.action_values.flags.writeable = False
        self._box_shape = space.shape
        self.action_space = gym.spaces.Discrete(n_actions)

    def action(self, action: int) -> NDArray[np.floating]:
        """Map a discrete action index to the continuous action of the wrapped env.

        :param action: index in ``range(n_actions)``.
        :return: a fresh array with the wrapped ``Box``'s shape and dtype.
        :raises ValueError: if ``action`` is not a valid index.
        """
        if not self.action_space.contains(action):
            raise ValueError(f"Invalid action {action!r} for {self.action_space}")
        return self.action_values[action].reshape(self._box_shape).copy()
