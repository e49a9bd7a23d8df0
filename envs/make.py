"""Factory for gymnasium environments with discrete actions and flat observations."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from gymnasium.envs.registration import parse_env_id

from envs.discretize import DiscretizeAction, check_n_bins

SUPPORTED_ENV_IDS: tuple[str, ...] = (
    "Pendulum-v1",
    "LunarLander-v3",
    "CartPole-v1",
    "Acrobot-v1",
    "MountainCar-v0",
)
"""Environment ids the project benchmarks on; any other registered id also works if its spaces fit."""


def make_env(
    env_id: str,
    seed: int | None = None,
    *,
    n_bins: int = 5,
    render_mode: str | None = None,
    **kwargs: Any,
) -> gym.Env[Any, Any]:
    """Create a gymnasium environment with a ``Discrete`` action space and a 1-D ``Box`` observation space.

    A ``Discrete`` action space is kept as is. A ``Box`` action space is wrapped in
    :class:`~envs.discretize.DiscretizeAction` (e.g. Pendulum-v1's torque in ``[-2, 2]`` becomes
    ``np.linspace(-2.0, 2.0, n_bins)``).

    Seeding: ``seed`` only seeds ``env.action_space`` (so ``env.action_space.sample()`` is
    reproducible). Nothing is stored for the first reset: the caller must also call
    ``env.reset(seed=seed)`` to seed the environment's own RNG.

    :param env_id: a registered gymnasium id, e.g. ``"CartPole-v1"`` (``"module:Env-v0"`` imports
        ``module`` first, as in :func:`gymnasium.make`).
    :param seed: if given, seeds ``env.action_space``; pass it to the first ``env.reset(seed=...)`` too.
    :param n_bins: number of evenly spaced values per continuous action dimension (>= 2); validated
        even when the env's actions are already discrete.
    :param render_mode: forwarded to :func:`gymnasium.make` unless ``None``.
    :param kwargs: further keyword arguments for :func:`gymnasium.make` (e.g. ``max_episode_steps``)
        or for the env's constructor (e.g. ``continuous=True`` for LunarLander-v3).
    :return: the environment, ready for ``reset``.
    :raises TypeError: if ``n_bins`` is not an integer.
    :raises ValueError: if ``env_id`` is malformed, unknown or deprecated, if ``n_bins < 2``, if the
        observation space is not a 1-D ``Box``, or if the action space is neither ``Discrete`` nor a
        finite, small enough ``Box``.
    """
    check_n_bins(n_bins)
    try:
        parse_env_id(env_id)
    except gym.error.Error as err:
        raise ValueError(f"Malformed environment id {env_id!r}: {err}") from err
    make_kwargs = kwargs if render_mode is None else {**kwargs, "render_mode": render_mode}
    try:
        env = gym.make(env_id, **make_kwargs)
    except (gym.error.UnregisteredEnv, gym.error.DeprecatedEnv) as err:
        raise ValueError(f"Unknown environment id {env_id!r}: {err}") from err
    try:
        env = _to_discrete_actions(env, n_bins)
    except ValueError:
        env.close()
        raise
    if seed is not None:
        env.action_space.seed(seed)
    return env


def _to_discrete_actions(env: gym.Env[Any, Any], n_bins: int) -> gym.Env[Any, Any]:
    """Check ``env``'s spaces and discretize a ``Box`` action space.

    :param env: freshly made environment.
    :param n_bins: number of values per continuous action dimension.
    :return: ``env`` itself or ``env`` wrapped in :class:`~envs.discretize.DiscretizeAction`.
    :raises ValueError: if a space is unsupported.
    """
    obs_space = env.observation_space
    if not isinstance(obs_space, gym.spaces.Box) or len(obs_space.shape) != 1:
        raise ValueError(f"Observation space must be a 1-D Box, got {obs_space}")
    if isinstance(env.action_space, gym.spaces.Discrete):
        return env
    if isinstance(env.action_space, gym.spaces.Box):
        return DiscretizeAction(env, n_bins)
    raise ValueError(f"Unsupported action space {env.action_space}: expected Discrete or Box")
