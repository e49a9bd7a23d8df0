"""Tests for the ``envs`` package: discrete actions, discretization, seeding and input checks."""

from __future__ import annotations

import itertools
import re
from collections.abc import Iterator
from typing import Any

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env

from envs import MAX_DISCRETE_ACTIONS, SUPPORTED_ENV_IDS, DiscretizeAction, make_env

# Importing Box2D (LunarLander, BipedalWalker) emits SWIG DeprecationWarnings that are not ours.
pytestmark = pytest.mark.filterwarnings(
    "ignore:builtin type .* has no __module__ attribute:DeprecationWarning"
)

FLAT_OBS = gym.spaces.Box(-1.0, 1.0, (3,), np.float32)


class _SpacesEnv(gym.Env[Any, Any]):
    """Minimal env whose spaces are chosen by the test, to probe unsupported spaces."""

    def __init__(self, action_space: gym.Space[Any], observation_space: gym.Space[Any]) -> None:
        """:param action_space: the env's action space.
        :param observation_space: the env's observation space.
        """
        self.action_space = action_space
        self.observation_space = observation_space

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[Any, dict]:
        """:param seed: RNG seed.
        :param options: unused.
        """
        super().reset(seed=seed)
        return self.observation_space.sample(), {}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict]:
        """:param action: ignored."""
        return self.observation_space.sample(), 0.0, False, False, {}


CUSTOM_ENVS: dict[str, tuple[gym.Space[Any], gym.Space[Any]]] = {
    "AlraoTestMultiBinary-v0": (gym.spaces.MultiBinary(3), FLAT_OBS),
    "AlraoTestDictAction-v0": (gym.spaces.Dict({"a": gym.spaces.Discrete(2)}), FLAT_OBS),
    "AlraoTestUnboundedBox-v0": (gym.spaces.Box(-np.inf, np.inf, (2,), np.float32), FLAT_OBS),
    "AlraoTestIntBox-v0": (gym.spaces.Box(0, 4, (1,), np.int64), FLAT_OBS),
    "AlraoTestImageObs-v0": (gym.spaces.Discrete(2), gym.spaces.Box(0, 255, (8, 8, 3), np.uint8)),
    "AlraoTestDictObs-v0": (gym.spaces.Discrete(2), gym.spaces.Dict({"x": FLAT_OBS})),
}


@pytest.fixture(autouse=True, scope="module")
def custom_envs_registered() -> Iterator[None]:
    """Register :data:`CUSTOM_ENVS` for this module and remove them afterwards."""
    for env_id, (action_space, observation_space) in CUSTOM_ENVS.items():
        gym.register(
            id=env_id,
            entry_point=_SpacesEnv,
            kwargs={"action_space": action_space, "observation_space": observation_space},
        )
    yield
    for env_id in CUSTOM_ENVS:
        del gym.registry[env_id]


def _rollout(env: gym.Env[Any, Any], seed: int, n_steps: int) -> list[tuple[np.ndarray, float]]:
    """Reset with ``seed`` and take ``n_steps`` actions sampled from the seeded action space.

    :param env: env made with ``make_env(..., seed=seed)``.
    :param seed: seed for the first reset.
    :param n_steps: number of steps; the env is reset on episode end.
    :return: ``(observation, reward)`` per step, the reset observation first with reward 0.
    """
    obs, _ = env.reset(seed=seed)
    trajectory = [(obs, 0.0)]
    for _ in range(n_steps):
        obs, reward, terminated, truncated, _ = env.step(env.action_space.sample())
        trajectory.append((obs, float(reward)))
        if terminated or truncated:
            obs, _ = env.reset()
    return trajectory


# check_env always warns that the env is wrapped (make_env returns gym.make's wrapper stack), and
# CartPole-v1 has infinite observation bounds; any other UserWarning from the checker fails the test.
@pytest.mark.filterwarnings(
    "error::UserWarning",
    "ignore:.*is different from the unwrapped version:UserWarning",
    "ignore:.*Box observation space m(inimum|aximum) value is -?infinity:UserWarning",
)
@pytest.mark.parametrize("env_id", [*SUPPORTED_ENV_IDS, "MountainCarContinuous-v0"])
def test_env_passes_gymnasium_env_checker_with_discrete_actions_and_flat_observations(env_id: str) -> None:
    env = make_env(env_id, seed=0)
    assert isinstance(env.action_space, gym.spaces.Discrete)
    assert isinstance(env.observation_space, gym.spaces.Box)
    assert len(env.observation_space.shape) == 1
    assert env.observation_space.dtype == np.float32
    check_env(env, skip_render_check=True)
    env.close()


def test_pendulum_bins_are_evenly_spaced_with_exact_torque_limits() -> None:
    env = make_env("Pendulum-v1", n_bins=5)
    assert isinstance(env, DiscretizeAction)
    assert env.action_space == gym.spaces.Discrete(5)
    assert env.action_values.shape == (5, 1)
    assert env.action_values.dtype == np.float32
    np.testing.assert_array_equal(env.action_values[:, 0], [-2.0, -1.0, 0.0, 1.0, 2.0])
    np.testing.assert_array_equal(env.action(0), [-2.0])
    np.testing.assert_array_equal(env.action(2), [0.0])
    np.testing.assert_array_equal(env.action(4), [2.0])


def test_n_bins_sets_pendulum_action_count_and_keeps_exact_ends() -> None:
    env = make_env("Pendulum-v1", n_bins=3)
    assert env.action_space == gym.spaces.Discrete(3)
    np.testing.assert_array_equal(env.action_values[:, 0], [-2.0, 0.0, 2.0])


@pytest.mark.parametrize(("action", "torque"), [(0, -2.0), (1, -1.0), (4, 2.0)])
def test_pendulum_discrete_action_applies_its_torque_to_underlying_env(action: int, torque: float) -> None:
    env = make_env("Pendulum-v1", seed=0)
    env.reset(seed=0)
    env.step(action)
    assert env.unwrapped.last_u == torque


def test_generic_box_env_is_discretized_between_its_bounds() -> None:
    env = make_env("MountainCarContinuous-v0", n_bins=4)
    assert isinstance(env, DiscretizeAction)
    assert env.action_space == gym.spaces.Discrete(4)
    np.testing.assert_allclose(env.action_values[:, 0], np.linspace(-1.0, 1.0, 4).astype(np.float32))


@pytest.mark.parametrize(("action", "velocity_sign"), [(0, -1.0), (3, 1.0)])
def test_generic_box_env_discrete_action_pushes_car_its_way(action: int, velocity_sign: float) -> None:
    env = make_env("MountainCarContinuous-v0", n_bins=4)
    env.reset(seed=0)
    obs, _, _, _, _ = env.step(action)
    assert np.sign(obs[1]) == velocity_sign


def test_multi_dim_box_is_cartesian_product_in_c_order() -> None:
    env = make_env("LunarLander-v3", n_bins=3, continuous=True)
    grid = [-1.0, 0.0, 1.0]
    assert env.action_space == gym.spaces.Discrete(9)
    np.testing.assert_array_equal(env.action_values, list(itertools.product(grid, grid)))
    np.testing.assert_array_equal(env.action(1), [-1.0, 0.0])
    np.testing.assert_array_equal(env.action(3), [0.0, -1.0])


def test_discrete_env_is_returned_without_discretizer() -> None:
    env = make_env("CartPole-v1", n_bins=7)
    assert not isinstance(env, DiscretizeAction)
    assert env.action_space == gym.spaces.Discrete(2)


@pytest.mark.parametrize("env_id", [*SUPPORTED_ENV_IDS, "MountainCarContinuous-v0"])
def test_same_seed_gives_identical_trajectories(env_id: str) -> None:
    first = _rollout(make_env(env_id, seed=123), seed=123, n_steps=40)
    second = _rollout(make_env(env_id, seed=123), seed=123, n_steps=40)
    for (obs_a, reward_a), (obs_b, reward_b) in zip(first, second, strict=True):
        np.testing.assert_array_equal(obs_a, obs_b)
        assert reward_a == reward_b


def test_seed_seeds_action_space_sampling() -> None:
    env_a, env_b, env_c = (make_env("LunarLander-v3", seed=s) for s in (5, 5, 6))
    seq_a, seq_b, seq_c = ([env.action_space.sample() for _ in range(30)] for env in (env_a, env_b, env_c))
    assert seq_a == seq_b
    assert seq_a != seq_c


def test_kwargs_and_render_mode_reach_gymnasium_make() -> None:
    env = make_env("CartPole-v1", seed=0, render_mode="rgb_array", max_episode_steps=3)
    assert env.render_mode == "rgb_array"
    env.reset(seed=0)
    truncations = [env.step(0)[3] for _ in range(3)]
    assert truncations == [False, False, True]


def test_discretized_env_spec_rebuilds_the_discretized_env() -> None:
    env = make_env("Pendulum-v1", n_bins=7)
    assert env.spec is not None
    rebuilt = env.spec.make()
    assert isinstance(rebuilt, DiscretizeAction)
    np.testing.assert_array_equal(rebuilt.action_values, env.action_values)


def test_discretizer_rejects_out_of_range_action() -> None:
    env = make_env("Pendulum-v1")
    with pytest.raises(ValueError, match=re.escape("Invalid action 5 for Discrete(5)")):
        env.action(5)


def test_action_values_are_read_only() -> None:
    env = make_env("Pendulum-v1")
    with pytest.raises(ValueError, match="read-only"):
        env.action_values[0, 0] = 0.0


@pytest.mark.parametrize(
    ("env_id", "kwargs", "error", "match"),
    [
        ("Nope-v0", {}, ValueError, "Unknown environment id 'Nope-v0'"),
        ("not an id", {}, ValueError, "Malformed environment id 'not an id'"),
        pytest.param(
            "LunarLander-v2",
            {},
            ValueError,
            "Unknown environment id 'LunarLander-v2'.*deprecated",
            marks=pytest.mark.filterwarnings("ignore:.*is out of date:DeprecationWarning"),
        ),
        ("Pendulum-v1", {"n_bins": 1}, ValueError, "n_bins must be >= 2, got n_bins=1"),
        ("CartPole-v1", {"n_bins": 0}, ValueError, "n_bins must be >= 2, got n_bins=0"),
        ("Pendulum-v1", {"n_bins": 2.5}, TypeError, "n_bins must be an int, got float 2.5"),
        ("Pendulum-v1", {"n_bins": True}, TypeError, "n_bins must be an int, got bool True"),
        ("BipedalWalker-v3", {"n_bins": 9}, ValueError, f"6561 actions, more than .* {MAX_DISCRETE_ACTIONS}"),
        ("AlraoTestMultiBinary-v0", {}, ValueError, r"Unsupported action space MultiBinary\(3\)"),
        ("AlraoTestDictAction-v0", {}, ValueError, r"Unsupported action space Dict\('a': Discrete\(2\)\)"),
        (
            "AlraoTestUnboundedBox-v0",
            {},
            ValueError,
            r"Cannot discretize action space Box\(-inf, inf.*finite",
        ),
        ("AlraoTestIntBox-v0", {}, ValueError, r"floating-point Box action space, got Box\(0, 4"),
        (
            "AlraoTestImageObs-v0",
            {},
            ValueError,
            r"Observation space must be a 1-D Box, got Box\(0, 255, \(8, 8, 3\)",
        ),
        ("AlraoTestDictObs-v0", {}, ValueError, r"Observation space must be a 1-D Box, got Dict\('x'"),
    ],
    ids=[
        "unknown-id",
        "malformed-id",
        "deprecated-id",
        "n_bins-1",
        "n_bins-0-on-discrete-env",
        "n_bins-float",
        "n_bins-bool",
        "too-many-actions",
        "multibinary-actions",
        "dict-actions",
        "unbounded-box-actions",
        "integer-box-actions",
        "image-observations",
        "dict-observations",
    ],
)
def test_make_env_rejects_bad_input(
    env_id: str, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    with pytest.raises(error, match=match):
        make_env(env_id, **kwargs)


def test_unknown_id_error_chains_gymnasium_error() -> None:
    with pytest.raises(ValueError) as excinfo:
        make_env("Nope-v0")
    assert isinstance(excinfo.value.__cause__, gym.error.NameNotFound)
