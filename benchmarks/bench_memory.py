"""Does a long DQN run leak memory? Resident memory of an Alrao DQN run, sampled while it trains.

Trains :func:`agents.dqn.train` (Alrao, CartPole-v1 by default) with a small replay buffer, so that the buffer
is full early and every later byte of growth would be a leak, while a background thread samples the process's
resident set size (``VmRSS``) every ``--interval`` seconds. Nothing in the training loop is hooked: the thread
reads the loop's step counter from the main thread's stack frame (``sys._current_frames``). After a warm-up
(the buffer full, the allocator settled) it fits ``RSS = a + b * step`` by least squares and reports ``b`` in MB
per 10,000 steps, the growth over the measured window, and an honest extrapolation to a one-hour run and to
2.5M steps (a straight line through a short run: a slow leak that starts late would not show).

Run from the repository root::

    python -m benchmarks.bench_memory                     # 100,000 steps, buffer 5,000 (a few minutes)
    python -m benchmarks.bench_memory --steps 20000 --buffer-size 1000   # reduced
    python -m benchmarks.bench_memory --logdir /tmp/run   # also TensorBoard events and checkpoints

Exit status 1 when the slope exceeds ``--max-slope`` MB per 10,000 steps (default 1.0).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from benchmarks.bench_buffer_memory import current_rss_bytes

MIB = 2**20


def _step_of(frame: Any, function: str) -> int | None:
    """``state.step`` of the innermost running frame of ``function`` on this stack, if any."""
    while frame is not None:
        if frame.f_code.co_name == function:
            state = frame.f_locals.get("state")
            step = getattr(state, "step", None)
            return step if isinstance(step, int) else None
        frame = frame.f_back
    return None


@dataclass
class Sample:
    """One measurement: seconds since the sampler started, the training step (None before the loop), RSS bytes."""

    seconds: float
    step: int | None
    rss: int


@dataclass
class RssSampler:
    """A daemon thread that samples ``VmRSS`` and the step counter of ``function`` running in ``thread_id``.

    :param interval: seconds between samples.
    :param function: name of the training function whose local ``state.step`` is read.
    :param thread_id: the thread running it (default: the thread that creates the sampler).
    """

    interval: float = 0.2
    function: str = "train"
    thread_id: int = field(default_factory=threading.get_ident)
    samples: list[Sample] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._start = time.perf_counter()

    def _run(self) -> None:
        while not self._stop.is_set():
            frame = sys._current_frames().get(self.thread_id)
            step = _step_of(frame, self.function)
            del frame
            self.samples.append(Sample(time.perf_counter() - self._start, step, current_rss_bytes()))
            self._stop.wait(self.interval)

    def __enter__(self) -> RssSampler:
        self._start = time.perf_counter()
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Growth:
    """Memory growth after the warm-up.

    :param slope_mb_per_10k: least-squares slope of RSS against the step, MB per 10,000 steps.
    :param window_growth_mb: median RSS of the last tenth of the window minus that of its first tenth, MB.
    :param first_step: first step of the window.
    :param last_step: last step of the window.
    :param samples: samples in the window.
    :param rss_start_mb: median RSS of the first tenth of the window, MB.
    """

    slope_mb_per_10k: float
    window_growth_mb: float
    first_step: int
    last_step: int
    samples: int
    rss_start_mb: float


def growth_after(samples: list[Sample], warmup_step: int) -> Growth:
    """Fit ``RSS = a + b * step`` on the samples taken at ``step >= warmup_step``.

    :raises ValueError: when fewer than 10 samples fall in the window.
    """
    window = [s for s in samples if s.step is not None and s.step >= warmup_step]
    if len(window) < 10:
        raise ValueError(f"only {len(window)} samples after step {warmup_step}: run longer or sample more often")
    xs = [float(s.step) for s in window]  # type: ignore[arg-type]
    ys = [s.rss / MIB for s in window]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx > 0 else 0.0
    tenth = max(len(ys) // 10, 1)
    start, end = statistics.median(ys[:tenth]), statistics.median(ys[-tenth:])
    return Growth(slope * 10_000, end - start, int(xs[0]), int(xs[-1]), len(window), start)


def measure(
    steps: int,
    buffer_size: int,
    env: str = "CartPole-v1",
    logdir: str | None = None,
    interval: float = 0.2,
    warmup_steps: int | None = None,
    train: Callable[..., dict[str, Any]] | None = None,
    **overrides: Any,
) -> tuple[Growth, dict[str, Any], list[Sample]]:
    """Train Alrao DQN for ``steps`` steps while sampling RSS; return the growth after the warm-up.

    :param steps: environment steps.
    :param buffer_size: replay buffer capacity (small: full early).
    :param env: gymnasium id.
    :param logdir: where the run writes (None: nothing, so only the training loop is measured).
    :param interval: seconds between RSS samples.
    :param warmup_steps: first step of the measured window (default: ``max(2 * buffer_size, steps // 4)``).
    :param train: the training function (default :func:`agents.dqn.train`).
    :param overrides: more :class:`agents.dqn.DQNConfig` fields.
    """
    import torch

    from agents.dqn import DQNConfig
    from agents.dqn import train as dqn_train

    torch.set_num_threads(1)
    run = train or dqn_train
    options: dict[str, Any] = {
        "env": env,
        "method": "alrao",
        "total_steps": steps,
        "buffer_size": buffer_size,
        "learning_starts": min(1000, buffer_size),
        "eval_every": max(steps // 5, 1),
        "eval_episodes": 2,
        "checkpoint_every": max(steps // 10, 1),
        **overrides,
    }
    config = DQNConfig(**options)
    gc.collect()
    with RssSampler(interval=interval) as sampler:
        summary = run(config, logdir, progress=False)
    warmup = warmup_steps if warmup_steps is not None else max(2 * buffer_size, steps // 4)
    return growth_after(sampler.samples, warmup), summary, sampler.samples


def main(argv: list[str] | None = None) -> int:
    """Run the benchmark, print a markdown table; exit status 1 if the slope exceeds ``--max-slope``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100_000)
    parser.add_argument("--buffer-size", type=int, default=5_000)
    parser.add_argument("--env", default="CartPole-v1")
    parser.add_argument("--interval", type=float, default=0.25)
    parser.add_argument(
        "--logdir", default=None, help="write TensorBoard events and checkpoints here (a temp dir if 'tmp')"
    )
    parser.add_argument("--max-slope", type=float, default=1.0, help="MB per 10,000 steps (default 1.0)")
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory() as tmp:
        logdir = tmp if args.logdir == "tmp" else args.logdir
        t0 = time.perf_counter()
        growth, summary, samples = measure(args.steps, args.buffer_size, args.env, logdir, args.interval)
        seconds = time.perf_counter() - t0
    sps = args.steps / seconds
    per_hour = sps * 3600
    first = next((s for s in samples if s.step is not None), samples[0])
    peak = max(s.rss for s in samples) / MIB
    rows = [
        ("environment, buffer", f"{args.env}, {args.buffer_size:,} transitions (full at step {args.buffer_size:,})"),
        ("steps, wall time", f"{args.steps:,} in {seconds:.0f} s ({sps:.0f} steps/s, 1 torch thread)"),
        ("RSS at the first step / peak", f"{first.rss / MIB:.1f} / {peak:.1f} MB"),
        ("measured window", f"steps {growth.first_step:,}-{growth.last_step:,} ({growth.samples} samples)"),
        ("RSS at the window's start", f"{growth.rss_start_mb:.1f} MB"),
        ("growth over the window", f"{growth.window_growth_mb:+.2f} MB"),
        ("slope", f"{growth.slope_mb_per_10k:+.3f} MB per 10,000 steps"),
        ("extrapolated: 1 hour", f"{per_hour:,.0f} steps: {growth.slope_mb_per_10k * per_hour / 10_000:+.1f} MB"),
        ("extrapolated: 2.5M steps", f"{growth.slope_mb_per_10k * 250:+.1f} MB"),
        ("final eval return", f"{summary['final_eval_return_mean']}"),
    ]
    print("| quantity | value |\n|---|---|")
    for name, value in rows:
        print(f"| {name} | {value} |")
    ok = growth.slope_mb_per_10k <= args.max_slope
    print("PASS" if ok else f"FAIL: slope above {args.max_slope} MB per 10,000 steps")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
