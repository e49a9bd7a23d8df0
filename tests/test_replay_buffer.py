"""Tests for agents.replay_buffer.ReplayBuffer."""

from __future__ import annotations

import inspect
import io
from typing import Any

import numpy as np
import pytest
import torch

from agents.replay_buffer import ReplayBatch, ReplayBuffer

OBS_SHAPE = (3,)


def _transition(i: int) -> tuple[np.ndarray, int, float, np.ndarray, bool]:
    """A transition whose fields all encode ``i`` (obs = i, next_obs = i + 0.5, ...)."""
    obs = np.full(OBS_SHAPE, i, dtype=np.float32)
    return obs, i % 4, float(i) * 10.0, obs + 0.5, i % 3 == 0


def _fill(buf: ReplayBuffer, start: int, stop: int) -> None:
    for i in range(start, stop):
        buf.add(*_transition(i))


def _batch_arrays(start: int, stop: int) -> tuple[np.ndarray, ...]:
    """The transitions ``start .. stop - 1`` stacked as ``add_batch`` arguments."""
    idx = np.arange(start, stop)
    obs = np.repeat(idx[:, None], OBS_SHAPE[0], axis=1).astype(np.float32)
    return obs, idx % 4, idx * 10.0, obs + 0.5, idx % 3 == 0


def _assert_batches_equal(a: ReplayBatch, b: ReplayBatch) -> None:
    for name in ReplayBatch._fields:
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)


def _roundtrip(state: dict[str, Any]) -> dict[str, Any]:
    """Pass a state dict through torch.save / torch.load(weights_only=True)."""
    f = io.BytesIO()
    torch.save(state, f)
    f.seek(0)
    return torch.load(f, weights_only=True)


def _stored(buf: ReplayBuffer) -> dict[str, np.ndarray]:
    n = len(buf)
    return {name: getattr(buf, name)[:n].copy() for name in ReplayBatch._fields}


def test_ring_wraparound_keeps_newest_capacity_transitions() -> None:
    buf = ReplayBuffer(OBS_SHAPE, capacity=5, seed=0)
    assert len(buf) == 0
    _fill(buf, 0, 3)
    assert len(buf) == 3
    _fill(buf, 3, 12)
    assert len(buf) == 5 and buf.capacity == 5
    kept = sorted(buf.observations[:, 0].tolist())
    assert kept == [7.0, 8.0, 9.0, 10.0, 11.0]
    # Every field of each slot belongs to the same transition.
    for slot in range(5):
        i = int(buf.observations[slot, 0])
        _obs, act, rew, nxt, term = _transition(i)
        assert buf.actions[slot] == act and buf.rewards[slot] == rew and buf.terminated[slot] == term
        np.testing.assert_array_equal(buf.next_observations[slot], nxt)
    batch = buf.sample(500)
    assert set(batch.observations[:, 0].tolist()) == {7.0, 8.0, 9.0, 10.0, 11.0}


def test_partially_filled_buffer_samples_only_stored_transitions() -> None:
    buf = ReplayBuffer(OBS_SHAPE, capacity=100, seed=1)
    _fill(buf, 1, 4)
    batch = buf.sample(300)
    assert set(batch.observations[:, 0].tolist()) == {1.0, 2.0, 3.0}


def test_same_seed_gives_identical_batches() -> None:
    bufs = [ReplayBuffer(OBS_SHAPE, capacity=50, seed=123) for _ in range(2)]
    other = ReplayBuffer(OBS_SHAPE, capacity=50, seed=124)
    for buf in [*bufs, other]:
        _fill(buf, 0, 40)
    for _ in range(3):
        _assert_batches_equal(bufs[0].sample(16), bufs[1].sample(16))
    assert not np.array_equal(bufs[0].sample(16).observations, other.sample(16).observations)


def test_sample_shapes_and_dtypes() -> None:
    buf = ReplayBuffer((2, 3), capacity=10, obs_dtype=np.uint8, seed=0)
    buf.add(np.ones((2, 3)), 2, 1.0, np.zeros((2, 3)), True)
    batch = buf.sample(7)
    assert batch.observations.shape == (7, 2, 3) and batch.observations.dtype == np.uint8
    assert batch.next_observations.shape == (7, 2, 3)
    assert batch.actions.dtype == np.int64 and batch.rewards.dtype == np.float32
    assert batch.terminated.dtype == np.bool_
    t = batch.to_torch("cpu")
    assert t.observations.dtype == torch.float32 and t.next_observations.dtype == torch.float32
    assert t.actions.dtype == torch.int64 and t.rewards.dtype == torch.float32
    assert t.terminated.dtype == torch.float32
    assert torch.equal(t.terminated, torch.ones(7))
    assert torch.equal(t.observations, torch.ones(7, 2, 3))
    assert torch.equal(t.actions, torch.full((7,), 2))


def test_sampled_batch_is_a_copy() -> None:
    buf = ReplayBuffer(OBS_SHAPE, capacity=4, seed=0)
    _fill(buf, 0, 4)
    batch = buf.sample(8)
    batch.observations[:] = -1
    assert (buf.observations >= 0).all()


def test_state_dict_roundtrip_continues_identically() -> None:
    reference = ReplayBuffer(OBS_SHAPE, capacity=8, seed=7)
    _fill(reference, 0, 11)  # wrapped around
    reference.sample(5)  # advance the generator

    state = _roundtrip(reference.state_dict())
    resumed = ReplayBuffer(OBS_SHAPE, capacity=8, seed=999)
    resumed.load_state_dict(state)
    assert len(resumed) == len(reference)
    for name, arr in _stored(reference).items():
        np.testing.assert_array_equal(getattr(resumed, name), arr, err_msg=name)

    for step in range(11, 20):
        _assert_batches_equal(reference.sample(6), resumed.sample(6))
        reference.add(*_transition(step))
        resumed.add(*_transition(step))
    for name, arr in _stored(reference).items():
        np.testing.assert_array_equal(_stored(resumed)[name], arr, err_msg=name)


def test_state_dict_of_partial_buffer_saves_only_filled_rows() -> None:
    buf = ReplayBuffer(OBS_SHAPE, capacity=1000, seed=3)
    _fill(buf, 0, 5)
    state = buf.state_dict()
    assert state["observations"].shape == (5, *OBS_SHAPE)
    assert state["actions"].shape == (5,) and state["terminated"].dtype == torch.bool
    assert isinstance(state["rng_state"]["state"]["state"], int)  # 128-bit python int

    resumed = ReplayBuffer(OBS_SHAPE, capacity=1000)
    resumed.load_state_dict(_roundtrip(state))
    _assert_batches_equal(buf.sample(9), resumed.sample(9))
    buf.add(*_transition(5))
    resumed.add(*_transition(5))
    _assert_batches_equal(buf.sample(9), resumed.sample(9))


def test_state_dict_copy_is_independent_of_later_adds() -> None:
    buf = ReplayBuffer(OBS_SHAPE, capacity=3, seed=0)
    _fill(buf, 0, 3)
    state = buf.state_dict()
    shared = buf.state_dict(copy=False)
    _fill(buf, 3, 6)
    assert state["observations"][:, 0].tolist() == [0.0, 1.0, 2.0]
    assert shared["observations"][:, 0].tolist() == [3.0, 4.0, 5.0]


def test_empty_buffer_state_roundtrip() -> None:
    buf = ReplayBuffer(OBS_SHAPE, capacity=4, seed=0)
    resumed = ReplayBuffer(OBS_SHAPE, capacity=4, seed=1)
    resumed.load_state_dict(_roundtrip(buf.state_dict()))
    assert len(resumed) == 0
    _fill(buf, 0, 2)
    _fill(resumed, 0, 2)
    _assert_batches_equal(buf.sample(4), resumed.sample(4))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"capacity": 5}, r"capacity: saved=4 current=5"),
        ({"obs_shape": (4,)}, r"obs_shape: saved=\(3,\) current=\(4,\)"),
        ({"obs_dtype": np.float64}, r"obs_dtype: saved=float32 current=float64"),
    ],
)
def test_load_state_dict_refuses_mismatched_buffer(kwargs: dict[str, Any], match: str) -> None:
    buf = ReplayBuffer(OBS_SHAPE, capacity=4, seed=0)
    _fill(buf, 0, 2)
    params: dict[str, Any] = {"obs_shape": OBS_SHAPE, "capacity": 4, **kwargs}
    other = ReplayBuffer(params.pop("obs_shape"), **params)
    with pytest.raises(ValueError, match=match):
        other.load_state_dict(buf.state_dict())
    assert len(other) == 0


@pytest.mark.parametrize(
    ("edit", "match"),
    [
        (lambda s: s.pop("pos"), r"missing keys: pos"),
        (lambda s: s.update(size=3), r"inconsistent replay buffer state: size=3 pos=2"),
        (lambda s: s.update(actions=s["actions"].to(torch.int32)), r"'actions' has shape .* dtype int32"),
        (lambda s: s.update(rng_state={"bit_generator": "PCG64"}), r"invalid generator state"),
        (lambda s: s.update(version=2), r"unsupported replay buffer state version 2"),
    ],
)
def test_load_state_dict_refuses_bad_state(edit: Any, match: str) -> None:
    buf = ReplayBuffer(OBS_SHAPE, capacity=4, seed=0)
    _fill(buf, 0, 2)
    state = buf.state_dict()
    edit(state)
    target = ReplayBuffer(OBS_SHAPE, capacity=4, seed=0)
    _fill(target, 10, 11)
    before = _stored(target)
    with pytest.raises(ValueError, match=match):
        target.load_state_dict(state)
    assert len(target) == 1  # untouched
    for name, arr in before.items():
        np.testing.assert_array_equal(_stored(target)[name], arr)


def test_terminated_is_stored_and_truncated_is_not() -> None:
    assert "truncated" not in ReplayBatch._fields
    assert "terminated" in ReplayBatch._fields
    assert "truncated" not in inspect.signature(ReplayBuffer.add).parameters
    assert "truncated" not in inspect.signature(ReplayBuffer.add_batch).parameters
    buf = ReplayBuffer(OBS_SHAPE, capacity=4, seed=0)
    obs = np.zeros(OBS_SHAPE)
    buf.add(obs, 0, 1.0, obs + 1, True)
    buf.add(obs, 1, 1.0, obs + 2, False)  # e.g. a time-limit truncation: stored as not terminated
    assert buf.terminated[:2].tolist() == [True, False]
    assert not hasattr(buf, "truncated")


def test_nbytes_matches_raw_transition_bytes() -> None:
    capacity, obs_shape = 1000, (8,)
    buf = ReplayBuffer(obs_shape, capacity=capacity)
    per_transition = 2 * 8 * 4 + 8 + 4 + 1  # obs + next_obs (float32), int64 action, float32 reward, bool
    assert buf.nbytes == capacity * per_transition
    assert ReplayBuffer(obs_shape, capacity=capacity, obs_dtype=np.uint8).nbytes == capacity * (2 * 8 + 13)


def test_large_buffer_is_lazily_allocated() -> None:
    # 10M transitions of 8 float32 would be ~770 MB if committed; construction must be instant and
    # the arrays must be real preallocated numpy arrays (no python object per transition).
    buf = ReplayBuffer((8,), capacity=10_000_000)
    assert buf.observations.shape == (10_000_000, 8) and buf.observations.dtype == np.float32
    assert buf.nbytes == 10_000_000 * 77


@pytest.mark.parametrize(
    ("call", "exc", "match"),
    [
        (lambda: ReplayBuffer(OBS_SHAPE, capacity=0), ValueError, r"capacity must be >= 1, got capacity=0"),
        (lambda: ReplayBuffer(OBS_SHAPE, capacity=-3), ValueError, r"capacity=-3"),
        (lambda: ReplayBuffer(OBS_SHAPE, capacity=2.5), TypeError, r"capacity must be an int"),
        (lambda: ReplayBuffer((0, 2)), ValueError, r"obs_shape dimensions must be >= 1"),
        (lambda: ReplayBuffer(OBS_SHAPE, obs_dtype=np.dtype("U3")), ValueError, r"no torch equivalent"),
        (lambda: ReplayBuffer(OBS_SHAPE, capacity=3).sample(1), ValueError, r"empty replay buffer"),
        (lambda: _one(OBS_SHAPE).sample(0), ValueError, r"batch_size must be >= 1, got batch_size=0"),
        (lambda: _one(OBS_SHAPE).sample(-1), ValueError, r"batch_size must be >= 1"),
        (
            lambda: _one(OBS_SHAPE).add(np.zeros(4), 0, 0.0, np.zeros(3), False),
            ValueError,
            r"obs has shape \(4,\), expected \(3,\)",
        ),
        (
            lambda: _one(OBS_SHAPE).add(np.zeros(3), 0, 0.0, np.zeros((1, 3)), False),
            ValueError,
            r"next_obs has shape \(1, 3\), expected \(3,\)",
        ),
        (
            lambda: _one(OBS_SHAPE).add(np.zeros(3), 1.5, 0.0, np.zeros(3), False),
            ValueError,
            r"action must be an integer scalar",
        ),
        (
            lambda: _one(OBS_SHAPE).add(np.zeros(3), 0, [1.0, 2.0], np.zeros(3), False),
            ValueError,
            r"reward must be a scalar",
        ),
        (
            lambda: _one(OBS_SHAPE).add_batch(np.zeros((2, 4)), [0, 0], [0, 0], np.zeros((2, 4)), [0, 0]),
            ValueError,
            r"obs has shape \(2, 4\), expected \(2, 3\)",
        ),
        (
            lambda: _one(OBS_SHAPE).add_batch(np.zeros(3), [0], [0], np.zeros(3), [0]),
            ValueError,
            r"obs must have shape \[n, \*obs_shape\]",
        ),
        (
            lambda: _one(OBS_SHAPE).add_batch(np.zeros((2, 3)), [0, 0], [0.0], np.zeros((2, 3)), [0, 0]),
            ValueError,
            r"rewards must have shape \(2,\) to match obs, got shape \(1,\)",
        ),
        (
            lambda: _one(OBS_SHAPE).add_batch(np.zeros((2, 3)), [0.0, 1.0], [0, 0], np.zeros((2, 3)), [0, 0]),
            ValueError,
            r"actions must be integers",
        ),
    ],
)
def test_bad_inputs(call: Any, exc: type[Exception], match: str) -> None:
    with pytest.raises(exc, match=match):
        call()


def _one(obs_shape: tuple[int, ...]) -> ReplayBuffer:
    buf = ReplayBuffer(obs_shape, capacity=3, seed=0)
    buf.add(np.zeros(obs_shape), 0, 0.0, np.zeros(obs_shape), False)
    return buf


def test_failed_add_leaves_buffer_unchanged() -> None:
    buf = _one(OBS_SHAPE)
    before = _stored(buf)
    with pytest.raises(ValueError):
        buf.add(np.ones(3), 1, 1.0, np.ones(4), True)
    assert len(buf) == 1
    for name, arr in before.items():
        np.testing.assert_array_equal(_stored(buf)[name], arr)


@pytest.mark.parametrize(
    ("capacity", "prefill", "chunks"),
    [
        (10, 0, [4, 3]),  # no wraparound
        (10, 7, [6]),  # batch crosses the end of the ring
        (10, 3, [10]),  # batch exactly capacity
        (4, 1, [11, 2]),  # batch larger than capacity
        (5, 0, [0, 5, 0]),  # empty batches
    ],
)
def test_add_batch_equals_repeated_add(capacity: int, prefill: int, chunks: list[int]) -> None:
    batched = ReplayBuffer(OBS_SHAPE, capacity=capacity, seed=5)
    single = ReplayBuffer(OBS_SHAPE, capacity=capacity, seed=5)
    _fill(batched, 0, prefill)
    _fill(single, 0, prefill)
    start = prefill
    for n in chunks:
        batched.add_batch(*_batch_arrays(start, start + n))
        _fill(single, start, start + n)
        start += n
    assert len(batched) == len(single)
    # Same raw layout (and write position), so the same seed samples the same batches.
    for name in ReplayBatch._fields:
        np.testing.assert_array_equal(getattr(batched, name), getattr(single, name), err_msg=name)
    assert batched.state_dict()["pos"] == single.state_dict()["pos"]
    _assert_batches_equal(batched.sample(12), single.sample(12))


@pytest.mark.parametrize(
    ("shape", "capacity", "dtype"), [((3,), 10, np.float32), ((2, 5), 7, np.uint8), ((8,), 1, np.float64)]
)
def test_bytes_needed_is_the_nbytes_of_the_buffer_it_describes(
    shape: tuple[int, ...], capacity: int, dtype: type
) -> None:
    assert ReplayBuffer.bytes_needed(shape, capacity, dtype) == ReplayBuffer(shape, capacity, obs_dtype=dtype).nbytes
