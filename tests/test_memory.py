"""Memory: a full 1M-transition replay buffer costs its raw bytes, and a DQN run stops growing once it is full.

The figures come from the benchmarks (``benchmarks/bench_buffer_memory.py``, ``benchmarks/bench_memory.py``),
run here in reduced form; the benchmarks print the full tables.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from agents.replay_buffer import ReplayBuffer
from benchmarks.bench_buffer_memory import lunar_lander_spec
from benchmarks.bench_memory import MIB, Sample, growth_after, measure

CAPACITY = 1_000_000


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _raw_transition_bytes(obs_shape: tuple[int, ...]) -> int:
    """Bytes of one LunarLander transition in its natural types: two float32 observations, an int64 action (as
    gymnasium returns it), a float32 reward and a one-byte terminated flag."""
    return 2 * int(np.prod(obs_shape)) * 4 + 8 + 4 + 1


def test_a_million_lunar_lander_transitions_are_stored_in_their_raw_bytes() -> None:
    obs_shape, _, _ = lunar_lander_spec()
    buffer = ReplayBuffer(obs_shape, capacity=CAPACITY)
    raw = CAPACITY * _raw_transition_bytes(obs_shape)
    assert buffer.nbytes <= 1.2 * raw
    assert buffer.nbytes == raw  # no per-transition object, no padding


def test_an_empty_million_transition_buffer_costs_almost_nothing_until_it_fills() -> None:
    """Measured in a fresh process: other tests' allocations in this one would blur an 8 MB bound."""
    obs_shape, _, _ = lunar_lander_spec()
    code = (
        "import gc, numpy as np\n"
        "from agents.replay_buffer import ReplayBuffer\n"
        "from benchmarks.bench_buffer_memory import current_rss_bytes\n"
        "gc.collect(); before = current_rss_bytes()\n"
        f"buffer = ReplayBuffer({obs_shape!r}, capacity={CAPACITY})\n"
        f"buffer.add(np.zeros({obs_shape!r}), 0, 0.0, np.zeros({obs_shape!r}), False)\n"
        "print(current_rss_bytes() - before, buffer.nbytes)\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, check=True)
    growth, nbytes = map(int, out.stdout.split())
    assert growth < 8 * MIB < nbytes / 8  # pages are committed lazily


def test_a_full_million_transition_buffer_grows_the_process_by_at_most_1_2x_its_raw_bytes() -> None:
    """The resident-memory measurement of benchmarks/bench_buffer_memory.py at the real capacity, in a fresh
    process (in this one, pages freed by other tests would be reused and blur the figure)."""
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    script = root / "benchmarks" / "bench_buffer_memory.py"
    run = subprocess.run([sys.executable, str(script), "--capacity", str(CAPACITY)], cwd=root, env=env,
                         capture_output=True, text=True)
    out = run.stdout
    assert run.returncode == 0, out + run.stderr
    ratio = float(out.split("RSS growth / raw bytes  :")[1].split()[0])
    assert 0.9 <= ratio <= 1.2, out


def test_growth_is_fitted_after_the_warm_up_only() -> None:
    samples = [Sample(0.0, None, 100 * MIB)]
    samples += [Sample(float(s), s, (200 + (s < 1000) * 50) * MIB + s * 100) for s in range(0, 20_000, 100)]
    growth = growth_after(samples, warmup_step=1000)
    assert growth.first_step == 1000 and growth.last_step == 19_900
    assert growth.slope_mb_per_10k == pytest.approx(10_000 * 100 / MIB)
    with pytest.raises(ValueError, match="only 0 samples after step 50000"):
        growth_after(samples, warmup_step=50_000)


def test_a_long_dqn_run_stops_growing_once_its_buffer_is_full(tmp_path: Path) -> None:
    """20,000 Alrao DQN steps on CartPole with a 1,000-transition buffer (full at step 1,000), TensorBoard events
    and checkpoints written: after 5,000 steps, resident memory grows by less than 4 MB."""
    growth, summary, _samples = measure(
        20_000, 1_000, logdir=str(tmp_path), interval=0.1, warmup_steps=5_000, learning_starts=500, eval_every=10_000
    )
    assert summary["total_steps"] == 20_000
    assert growth.last_step >= 19_000 and growth.samples >= 20
    assert growth.window_growth_mb < 4.0, growth
    assert growth.slope_mb_per_10k < 2.0, growth
