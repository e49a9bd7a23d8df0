"""A preallocated numpy ring buffer of transitions for off-policy agents with discrete actions.

Every transition is stored once, in flat preallocated arrays (``observations``,
``next_observations``, ``actions``, ``rewards``, ``terminated``), so the memory used is the raw size
of the stored transitions: no Python object per transition. The arrays are allocated with
``np.zeros``, whose pages the OS commits lazily, so an empty 1M-transition buffer costs almost
nothing until it fills.

Only ``terminated`` is stored: a target bootstraps through ``next_obs`` unless the episode
*terminated* (reached a terminal state of the MDP). A *truncated* episode (time limit) still
bootstraps, so the caller stores it with ``terminated=False`` and its **real final observation** as
``next_obs``, never the first observation of the next episode returned by an auto-resetting
environment (gymnasium vector envs: ``info["final_obs"]`` in same-step autoreset mode; in
next-step autoreset mode skip the step that only performs the reset).

Sampling is uniform with replacement and uses a ``np.random.Generator`` owned by the buffer; its
state is part of :meth:`ReplayBuffer.state_dict`, so a resumed run samples exactly the batches the
uninterrupted run would have sampled. The state dict holds only torch tensors and plain Python
ints, strs, lists and dicts, so it survives ``torch.save`` / ``torch.load(weights_only=True)``.

>>> buf = ReplayBuffer((4,), capacity=100, seed=0)
>>> buf.add(np.zeros(4), 1, 0.5, np.ones(4), False)
>>> batch = buf.sample(32)
>>> batch.observations.shape, batch.actions.dtype
((32, 4), dtype('int64'))
"""

from __future__ import annotations

import operator
import os
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt
import torch
from torch import Tensor

__all__ = ["ReplayBatch", "ReplayBuffer", "TorchReplayBatch", "available_memory"]

_STATE_VERSION = 1
_ARRAY_FIELDS = ("observations", "actions", "rewards", "next_observations", "terminated")


class TorchReplayBatch(NamedTuple):
    """A :class:`ReplayBatch` as torch tensors, ready for a loss.

    ``observations`` / ``next_observations``: float32 ``[B, *obs_shape]``; ``actions``: int64
    ``[B]``; ``rewards``: float32 ``[B]``; ``terminated``: float32 ``[B]`` holding 0.0 or 1.0.
    """

    observations: Tensor
    actions: Tensor
    rewards: Tensor
    next_observations: Tensor
    terminated: Tensor


class ReplayBatch(NamedTuple):
    """A batch of transitions sampled from a :class:`ReplayBuffer` (numpy copies, not views).

    ``observations`` / ``next_observations``: ``[B, *obs_shape]`` in the buffer's ``obs_dtype``;
    ``actions``: int64 ``[B]``; ``rewards``: float32 ``[B]``; ``terminated``: bool ``[B]``.
    There is deliberately no ``truncated`` field (see the module docstring).
    """

    observations: np.ndarray
    actions: np.ndarray
    rewards: np.ndarray
    next_observations: np.ndarray
    terminated: np.ndarray

    def to_torch(self, device: torch.device | str = "cpu") -> TorchReplayBatch:
        """Convert to torch tensors on ``device``.

        Observations become float32 (integer observations such as uint8 pixels are converted
        value for value, not rescaled), actions int64, rewards float32, and ``terminated`` float32
        0/1 so it can be used directly in ``r + gamma * (1 - terminated) * V(s')``.

        :param device: target device of the tensors.
        """
        return TorchReplayBatch(
            observations=torch.as_tensor(self.observations, dtype=torch.float32, device=device),
            actions=torch.as_tensor(self.actions, dtype=torch.int64, device=device),
            rewards=torch.as_tensor(self.rewards, dtype=torch.float32, device=device),
            next_observations=torch.as_tensor(self.next_observations, dtype=torch.float32, device=device),
            terminated=torch.as_tensor(self.terminated, dtype=torch.float32, device=device),
        )


def _is_integer_dtype(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer)


class ReplayBuffer:
    """Fixed-capacity ring buffer of ``(obs, action, reward, next_obs, terminated)`` transitions.

    When full, each new transition overwrites the oldest one, so the buffer always holds the
    newest ``capacity`` transitions.

    :param obs_shape: shape of one observation, e.g. ``(8,)`` for LunarLander.
    :param capacity: maximum number of transitions kept (>= 1).
    :param obs_dtype: numpy dtype the observations are stored in (e.g. ``np.uint8`` for pixels);
        it must be a dtype torch can represent, so that the buffer can be checkpointed.
    :param seed: seed of the buffer's own ``np.random.default_rng`` used by :meth:`sample`.
    """

    def __init__(
        self,
        obs_shape: tuple[int, ...],
        capacity: int = 1_000_000,
        *,
        obs_dtype: npt.DTypeLike = np.float32,
        seed: int | None = None,
    ) -> None:
        try:
            capacity = operator.index(capacity)
        except TypeError:
            raise TypeError(f"capacity must be an int, got {type(capacity).__name__}") from None
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got capacity={capacity}")
        try:
            shape = tuple(operator.index(d) for d in obs_shape)
        except TypeError:
            raise TypeError(f"obs_shape must be a tuple of ints, got {obs_shape!r}") from None
        if any(d < 1 for d in shape):
            raise ValueError(f"obs_shape dimensions must be >= 1, got obs_shape={shape}")
        dtype = np.dtype(obs_dtype)
        try:
            torch.from_numpy(np.zeros(0, dtype=dtype))
        except TypeError:
            raise ValueError(
                f"obs_dtype={dtype} has no torch equivalent, so the buffer could not be checkpointed"
            ) from None

        self._capacity = capacity
        self._obs_shape = shape
        self._obs_dtype = dtype
        self._pos = 0  # index the next transition is written to
        self._size = 0  # number of valid transitions
        self._rng = np.random.default_rng(seed)
        self.observations = np.zeros((capacity, *shape), dtype=dtype)
        self.next_observations = np.zeros((capacity, *shape), dtype=dtype)
        self.actions = np.zeros(capacity, dtype=np.int64)
        self.rewards = np.zeros(capacity, dtype=np.float32)
        self.terminated = np.zeros(capacity, dtype=np.bool_)

    # ------------------------------------------------------------------ properties
    @property
    def capacity(self) -> int:
        """Maximum number of transitions kept."""
        return self._capacity

    @property
    def obs_shape(self) -> tuple[int, ...]:
        """Shape of one observation."""
        return self._obs_shape

    @property
    def obs_dtype(self) -> np.dtype:
        """Storage dtype of the observations."""
        return self._obs_dtype

    @property
    def nbytes(self) -> int:
        """Total bytes of the preallocated arrays (``capacity`` times the bytes of a transition)."""
        return sum(getattr(self, name).nbytes for name in _ARRAY_FIELDS)

    @staticmethod
    def bytes_needed(obs_shape: tuple[int, ...], capacity: int, obs_dtype: npt.DTypeLike = np.float32) -> int:
        """:attr:`nbytes` of a buffer with these arguments, without allocating it: ``capacity`` times
        (two observations + an int64 action + a float32 reward + a bool).

        :param obs_shape: shape of one observation.
        :param capacity: number of transitions.
        :param obs_dtype: storage dtype of the observations.
        """
        obs = int(np.prod(obs_shape, dtype=np.int64)) * np.dtype(obs_dtype).itemsize
        return int(capacity) * (2 * obs + 8 + 4 + 1)

    def __len__(self) -> int:
        """Number of transitions currently stored (at most ``capacity``)."""
        return self._size

    def __repr__(self) -> str:
        return (
            f"ReplayBuffer(obs_shape={self._obs_shape}, capacity={self._capacity}, "
            f"obs_dtype={self._obs_dtype}, len={self._size})"
        )

    # ------------------------------------------------------------------ adding
    def add(
        self,
        obs: npt.ArrayLike,
        action: int,
        reward: float,
        next_obs: npt.ArrayLike,
        terminated: bool,
    ) -> None:
        """Store one transition, overwriting the oldest one when the buffer is full.

        :param obs: observation the action was taken in, of shape ``obs_shape``.
        :param action: the discrete action taken (an integer).
        :param reward: the reward received.
        :param next_obs: the observation reached. When the episode ended (terminated *or*
            truncated) this must be the real final observation, not the reset observation of the
            next episode.
        :param terminated: True only if the episode reached a terminal state (no bootstrapping).
            Pass False for a time-limit truncation; truncation is not stored.
        """
        obs_arr = self._check_obs("obs", obs, self._obs_shape)
        next_arr = self._check_obs("next_obs", next_obs, self._obs_shape)
        action_arr = np.asarray(action)
        if action_arr.ndim != 0 or not _is_integer_dtype(action_arr.dtype):
            raise ValueError(f"action must be an integer scalar, got {action!r}")
        reward_arr = np.asarray(reward)
        if reward_arr.ndim != 0:
            raise ValueError(f"reward must be a scalar, got shape {reward_arr.shape}")
        if np.ndim(terminated) != 0:
            raise ValueError(f"terminated must be a scalar bool, got shape {np.shape(terminated)}")
        i = self._pos
        self.observations[i] = obs_arr
        self.next_observations[i] = next_arr
        self.actions[i] = action_arr
        self.rewards[i] = reward_arr
        self.terminated[i] = bool(terminated)
        self._pos = (i + 1) % self._capacity
        self._size = min(self._size + 1, self._capacity)

    def add_batch(
        self,
        obs: npt.ArrayLike,
        actions: npt.ArrayLike,
        rewards: npt.ArrayLike,
        next_obs: npt.ArrayLike,
        terminated: npt.ArrayLike,
    ) -> None:
        """Store ``n`` transitions at once (e.g. one step of a vectorized environment).

        Equivalent to calling :meth:`add` on each row in order; if ``n > capacity`` only the last
        ``capacity`` rows are kept.

        :param obs: observations, shape ``[n, *obs_shape]``.
        :param actions: integer actions, shape ``[n]``.
        :param rewards: rewards, shape ``[n]``.
        :param next_obs: next observations, shape ``[n, *obs_shape]``; for sub-environments whose
            episode just ended, the real final observation (not the auto-reset one).
        :param terminated: terminal flags, shape ``[n]`` (truncation is not stored).
        """
        obs_arr = np.asarray(obs)
        if obs_arr.ndim != len(self._obs_shape) + 1:
            raise ValueError(
                f"obs must have shape [n, *obs_shape] = [n, {', '.join(map(str, self._obs_shape))}], "
                f"got shape {obs_arr.shape}"
            )
        n = obs_arr.shape[0]
        batch_shape = (n, *self._obs_shape)
        obs_arr = self._check_obs("obs", obs_arr, batch_shape)
        next_arr = self._check_obs("next_obs", next_obs, batch_shape)
        actions_arr = np.asarray(actions)
        if not _is_integer_dtype(actions_arr.dtype):
            raise ValueError(f"actions must be integers, got dtype {actions_arr.dtype}")
        rewards_arr = np.asarray(rewards)
        term_arr = np.asarray(terminated)
        for name, arr in (("actions", actions_arr), ("rewards", rewards_arr), ("terminated", term_arr)):
            if arr.shape != (n,):
                raise ValueError(f"{name} must have shape ({n},) to match obs, got shape {arr.shape}")
        if n == 0:
            return
        if n > self._capacity:  # only the last `capacity` rows would survive repeated add()
            skip = n - self._capacity
            self._pos = (self._pos + skip) % self._capacity
            obs_arr, next_arr = obs_arr[skip:], next_arr[skip:]
            actions_arr, rewards_arr, term_arr = actions_arr[skip:], rewards_arr[skip:], term_arr[skip:]
            n = self._capacity
        # At most two contiguous slices: [pos, pos + first) and [0, n - first).
        first = min(n, self._capacity - self._pos)
        pieces = (
            (slice(self._pos, self._pos + first), slice(0, first)),
            (slice(0, n - first), slice(first, n)),
        )
        for dst, src in pieces:
            if src.stop == src.start:
                continue
            self.observations[dst] = obs_arr[src]
            self.next_observations[dst] = next_arr[src]
            self.actions[dst] = actions_arr[src]
            self.rewards[dst] = rewards_arr[src]
            self.terminated[dst] = term_arr[src].astype(np.bool_)
        self._pos = (self._pos + n) % self._capacity
        self._size = min(self._size + n, self._capacity)

    @staticmethod
    def _check_obs(name: str, value: npt.ArrayLike, expected: tuple[int, ...]) -> np.ndarray:
        arr = np.asarray(value)
        if arr.shape != expected:
            raise ValueError(f"{name} has shape {arr.shape}, expected {expected}")
        return arr

    # ------------------------------------------------------------------ sampling
    def sample(self, batch_size: int) -> ReplayBatch:
        """Draw ``batch_size`` transitions uniformly with replacement from the stored ones.

        :param batch_size: number of transitions (>= 1; may exceed ``len(self)`` since sampling
            is with replacement).
        """
        batch_size = operator.index(batch_size)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got batch_size={batch_size}")
        if self._size == 0:
            raise ValueError("cannot sample from an empty replay buffer; add transitions first")
        idx = self._rng.integers(0, self._size, size=batch_size)
        return ReplayBatch(
            observations=self.observations[idx],
            actions=self.actions[idx],
            rewards=self.rewards[idx],
            next_observations=self.next_observations[idx],
            terminated=self.terminated[idx],
        )

    # ------------------------------------------------------------------ checkpointing
    def state_dict(self, *, copy: bool = True) -> dict[str, Any]:
        """Contents, write position, size and sampler state, in ``weights_only``-loadable form.

        Only the filled rows (the first ``len(self)``) are saved, so a partly filled buffer makes
        a small checkpoint. Arrays become CPU torch tensors; the generator state is the plain dict
        of ``rng.bit_generator.state`` (Python ints, including 128-bit ones, and strs).

        :param copy: copy the arrays (default). With ``copy=False`` the tensors share memory with
            the buffer, avoiding a second copy of a large buffer, but they change when the buffer
            is added to afterwards: save them before the next :meth:`add`.
        """
        n = self._size
        arrays = {}
        for name in _ARRAY_FIELDS:
            part = getattr(self, name)[:n]
            arrays[name] = torch.from_numpy(part.copy() if copy else part)
        return {
            "version": _STATE_VERSION,
            "capacity": self._capacity,
            "obs_shape": list(self._obs_shape),
            "obs_dtype": self._obs_dtype.str,
            "size": n,
            "pos": self._pos,
            "rng_state": _plain(self._rng.bit_generator.state),
            **arrays,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the contents, position, size and sampler state saved by :meth:`state_dict`.

        The buffer must have the same ``capacity``, ``obs_shape`` and ``obs_dtype`` as the saved
        one. Everything is validated before anything is changed, so a bad state leaves the buffer
        untouched.

        :param state: a dict returned by :meth:`state_dict` (possibly after a save/load round trip).
        """
        missing = [
            k
            for k in (
                "version",
                "capacity",
                "obs_shape",
                "obs_dtype",
                "size",
                "pos",
                "rng_state",
                *_ARRAY_FIELDS,
            )
            if k not in state
        ]
        if missing:
            raise ValueError(f"replay buffer state is missing keys: {', '.join(missing)}")
        if state["version"] != _STATE_VERSION:
            raise ValueError(
                f"unsupported replay buffer state version {state['version']!r} (expected {_STATE_VERSION})"
            )
        saved = {
            "capacity": int(state["capacity"]),
            "obs_shape": tuple(int(d) for d in state["obs_shape"]),
            "obs_dtype": np.dtype(state["obs_dtype"]),
        }
        current = {"capacity": self._capacity, "obs_shape": self._obs_shape, "obs_dtype": self._obs_dtype}
        diffs = [f"{k}: saved={saved[k]} current={current[k]}" for k in saved if saved[k] != current[k]]
        if diffs:
            raise ValueError("replay buffer state does not match this buffer: " + "; ".join(diffs))
        size, pos = int(state["size"]), int(state["pos"])
        cap = self._capacity
        if not 0 <= size <= cap or not 0 <= pos < cap or (size < cap and pos != size):
            raise ValueError(f"inconsistent replay buffer state: size={size} pos={pos} capacity={cap}")
        expected = {
            "observations": ((size, *self._obs_shape), self._obs_dtype),
            "next_observations": ((size, *self._obs_shape), self._obs_dtype),
            "actions": ((size,), np.dtype(np.int64)),
            "rewards": ((size,), np.dtype(np.float32)),
            "terminated": ((size,), np.dtype(np.bool_)),
        }
        arrays = {}
        for name, (shape, dtype) in expected.items():
            value = state[name]
            arr = value.detach().cpu().numpy() if isinstance(value, Tensor) else np.asarray(value)
            if arr.shape != shape or arr.dtype != dtype:
                raise ValueError(
                    f"replay buffer state {name!r} has shape {arr.shape} dtype {arr.dtype}, "
                    f"expected shape {shape} dtype {dtype}"
                )
            arrays[name] = arr
        rng = np.random.default_rng()
        try:
            rng.bit_generator.state = state["rng_state"]
        except (TypeError, ValueError, KeyError) as e:
            raise ValueError(f"invalid generator state in replay buffer state: {e}") from e

        for name, arr in arrays.items():
            getattr(self, name)[:size] = arr
        self._size, self._pos, self._rng = size, pos, rng


def _plain(value: Any) -> Any:
    """Deep-convert a generator state to plain Python dicts/ints/strs (no numpy scalars)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):  # e.g. MT19937 key array
        return value.tolist()
    return value


def available_memory() -> int | None:
    """Bytes of memory the system can still give without swapping (Linux ``MemAvailable``; elsewhere
    the free physical pages), or None when the system does not say."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, OSError, ValueError):
        return None
