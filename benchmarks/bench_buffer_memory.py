"""Memory overhead of :class:`agents.replay_buffer.ReplayBuffer` when full.

Builds a 1,000,000-transition buffer for LunarLander-v3 observations (shape ``(8,)``, float32),
fills it completely with random transitions through ``add_batch`` in chunks of 10,000, and
compares the growth of the process's resident memory with the raw bytes of the stored
transitions. The target is ``RSS growth / raw bytes <= 1.2``; the exit status is 1 otherwise.
The process has a fixed overhead of a few MiB (allocator arenas, per-chunk temporaries), so the
ratio is only meaningful for large capacities such as the default (at ``--capacity 100000`` it
is about 1.5 for that reason alone).

Run from the repository root (Linux; takes a few seconds)::

    python -m benchmarks.bench_buffer_memory [--capacity N] [--chunk N]

(or ``python benchmarks/bench_buffer_memory.py`` once the project is installed, ``pip install -e .``).
"""

from __future__ import annotations

import argparse
import gc
import resource
import sys
import time

import numpy as np

from agents.replay_buffer import ReplayBuffer

LUNAR_LANDER_OBS_SHAPE = (8,)  # gymnasium LunarLander-v3 observation_space.shape (Box, float32)
LUNAR_LANDER_N_ACTIONS = 4
TARGET_RATIO = 1.2
MIB = 2**20


def current_rss_bytes() -> int:
    """Resident set size of this process now (``VmRSS``), or the peak RSS where /proc is absent."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def lunar_lander_spec() -> tuple[tuple[int, ...], int, str]:
    """Observation shape and action count of LunarLander-v3, from gymnasium if it is installed."""
    try:
        import gymnasium as gym

        env = gym.make("LunarLander-v3")
    except Exception:  # gymnasium or Box2D missing: use the documented values
        return LUNAR_LANDER_OBS_SHAPE, LUNAR_LANDER_N_ACTIONS, "hard-coded"
    try:
        return tuple(env.observation_space.shape), int(env.action_space.n), "gymnasium"
    finally:
        env.close()


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark and print the figures; return 0 if the ratio meets the target, else 1.

    :param argv: command-line arguments (default: ``sys.argv[1:]``).
    """
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--capacity", type=int, default=1_000_000)
    parser.add_argument("--chunk", type=int, default=10_000)
    args = parser.parse_args(argv)

    obs_shape, n_actions, source = lunar_lander_spec()
    rng = np.random.default_rng(0)
    gc.collect()
    rss_before = current_rss_bytes()
    t0 = time.perf_counter()

    buf = ReplayBuffer(obs_shape, capacity=args.capacity, seed=0)
    rss_empty = current_rss_bytes()
    for start in range(0, args.capacity, args.chunk):
        n = min(args.chunk, args.capacity - start)
        buf.add_batch(
            rng.standard_normal((n, *obs_shape), dtype=np.float32),
            rng.integers(0, n_actions, size=n),
            rng.standard_normal(n, dtype=np.float32),
            rng.standard_normal((n, *obs_shape), dtype=np.float32),
            rng.random(n) < 0.01,
        )
    fill_s = time.perf_counter() - t0
    gc.collect()
    rss_after = current_rss_bytes()
    assert len(buf) == args.capacity

    obs_bytes = int(np.prod(obs_shape)) * buf.observations.itemsize
    action_bytes = buf.actions.itemsize
    per_transition = 2 * obs_bytes + action_bytes + buf.rewards.itemsize + buf.terminated.itemsize
    raw = args.capacity * per_transition
    growth = rss_after - rss_before
    ratio = growth / raw

    t1 = time.perf_counter()
    buf.sample(256)
    sample_us = (time.perf_counter() - t1) * 1e6

    print(
        f"capacity                : {args.capacity:,} transitions, obs shape {obs_shape} float32 ({source})"
    )
    print(
        f"raw transition bytes    : {raw:,} B ({raw / MIB:.1f} MiB) = {args.capacity:,} x "
        f"(2*{obs_bytes} obs + {action_bytes} action + 4 reward + 1 terminated)"
    )
    print(f"buffer.nbytes           : {buf.nbytes:,} B ({buf.nbytes / MIB:.1f} MiB)")
    print(
        f"RSS before/empty/full   : {rss_before / MIB:.1f} / {rss_empty / MIB:.1f} / "
        f"{rss_after / MIB:.1f} MiB"
    )
    print(f"RSS growth              : {growth:,} B ({growth / MIB:.1f} MiB)")
    print(f"RSS growth / raw bytes  : {ratio:.3f} (target <= {TARGET_RATIO})")
    print(f"fill time               : {fill_s:.2f} s; sample(256): {sample_us:.0f} us")
    ok = ratio <= TARGET_RATIO
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
