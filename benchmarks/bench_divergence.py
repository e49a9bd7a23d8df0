"""Divergence matrix: Alrao with an absurd ``eta_max`` against SGD at the same rate, on DQN, CIFAR and PTB.

For every task, every rate ``eta`` in ``--rates`` (default 10, 100, 1e3, 1e4) and every seed, two runs:
Alrao with per-unit rates in ``[eta_min, eta]`` (the task's default ``eta_min``), and plain SGD at
``lr = eta``. Each run is instrumented (the step functions are wrapped, nothing in the library changes) to
record whether a NaN ever reached

* the **loss** of a training step (``inf`` is counted apart: Alrao reports an infinite loss when no head has
  a finite likelihood, and then moves no parameter);
* the **switch** (a NaN in its state, or a posterior that is not a probability vector);
* the **averaged output** (DQN: the Q-values of the step's minibatch, every 10 steps; supervised: the
  validation loss of each epoch, which is computed from the switch's mixture);
* the **checkpoint** written at the end (every floating-point tensor in it);

and whether the run **completed** and **learns**:

* DQN (CartPole-v1): the final greedy return (5 evaluation episodes) beats a uniformly random policy's mean
  return by at least 3 of its standard deviations (20 random episodes, ``agents.compare.random_policy_returns``);
* CIFAR (tiny synthetic images whose class sets the colour, VGG19 at width 1/16) and PTB (a few sentences, the
  paper's character LSTM): the best validation loss is below the uniform prediction's (``ln 10`` nats;
  ``log2 |vocabulary|`` bits).

Run from the repository root::

    python -m benchmarks.bench_divergence --quick     # 3 seeds, short runs: a few minutes on 1 core
    python -m benchmarks.bench_divergence             # 5 seeds, longer runs

Prints one markdown table per task and a summary; exit status 1 if an Alrao run failed to complete or let a
NaN through.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

RATES = (10.0, 100.0, 1e3, 1e4)
METHODS = ("alrao", "sgd")


@dataclass
class Record:
    """What one run let through, and how it ended."""

    task: str
    method: str
    rate: float
    seed: int
    steps: int = 0
    nan_loss: int = 0
    inf_loss: int = 0
    nan_switch: int = 0
    nan_output: int = 0
    nan_checkpoint: bool = False
    completed: bool = False
    error: str | None = None
    metric: float = math.nan
    learns: bool = False
    frozen_units: int = 0
    seconds: float = 0.0

    @property
    def any_nan(self) -> bool:
        return bool(self.nan_loss or self.nan_switch or self.nan_output or self.nan_checkpoint)


# --- instrumentation --------------------------------------------------------------------------------------


def _switch_is_bad(switch: Any) -> bool:
    """NaN in the switch's state, or a posterior that is not a probability vector."""
    if any(torch.isnan(b).any() for b in (switch.log_weights, switch.log_predictive, switch.log_filtered)):
        return True
    for p in (switch.posterior, switch.filtered_posterior):
        if not (torch.isfinite(p).all() and (p >= 0).all() and abs(float(p.sum()) - 1.0) < 1e-6):
            return True
    return False


def _count_loss(record: Record, loss: float) -> None:
    record.steps += 1
    if math.isnan(loss):
        record.nan_loss += 1
    elif not math.isfinite(loss):
        record.inf_loss += 1


@contextlib.contextmanager
def _patched(owner: Any, name: str, wrapper: Callable[[Callable[..., Any]], Callable[..., Any]]) -> Iterator[None]:
    original = getattr(owner, name)
    setattr(owner, name, wrapper(original))
    try:
        yield
    finally:
        setattr(owner, name, original)


def _checkpoint_has_nan(path: str) -> bool:
    from alrao_rl.checkpoint import load_checkpoint

    def walk(value: Any) -> Iterator[Tensor]:
        if isinstance(value, Tensor):
            if value.is_floating_point():
                yield value
        elif isinstance(value, dict):
            for v in value.values():
                yield from walk(v)
        elif isinstance(value, (list, tuple)):
            for v in value:
                yield from walk(v)

    return any(bool(torch.isnan(t).any()) for t in walk(load_checkpoint(path)))


# --- DQN --------------------------------------------------------------------------------------------------


_FLOORS: dict[str, tuple[float, float]] = {}


def random_floor(env_id: str) -> tuple[float, float]:
    """Mean and standard deviation of a uniformly random policy's return (20 episodes)."""
    if env_id not in _FLOORS:
        from agents.compare import random_policy_returns

        returns = random_policy_returns(env_id, 20)
        _FLOORS[env_id] = (float(np.mean(returns)), float(np.std(returns)))
    return _FLOORS[env_id]


def run_dqn(
    method: str, rate: float, seed: int, steps: int, env: str = "CartPole-v1", eval_episodes: int = 5
) -> Record:
    """One DQN run (Alrao with ``eta_max = rate``, or SGD with ``lr = rate``), instrumented."""
    from agents.dqn import DQNAgent, DQNConfig, train

    record = Record(f"dqn {env}", method, rate, seed)

    def wrap(original: Callable[..., float]) -> Callable[..., float]:
        def train_step(agent: DQNAgent, batch: Any) -> float:
            loss = original(agent, batch)
            _count_loss(record, loss)
            if agent.alrao and _switch_is_bad(agent.q_net.switch):
                record.nan_switch += 1
            if record.steps % 10 == 0 and torch.isnan(agent.q_values(batch.observations)).any():
                record.nan_output += 1
            return loss

        return train_step

    options: dict[str, Any] = {"eta_max": rate} if method == "alrao" else {"lr": rate}
    config = DQNConfig(
        env=env, method=method, seed=seed, total_steps=steps, eval_every=steps, eval_episodes=eval_episodes,
        learning_starts=min(1000, steps // 5), exploration_steps=min(10_000, steps // 2), buffer_size=steps,
        checkpoint_every=steps, **options,
    )  # fmt: skip
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as logdir, _patched(DQNAgent, "train_step", wrap):
        try:
            summary = train(config, logdir, progress=False)
            record.completed = summary["total_steps"] == steps
            record.metric = float(summary["final_eval_return_mean"])
            record.nan_checkpoint = _checkpoint_has_nan(os.path.join(logdir, "checkpoint.pt"))
        except Exception as e:  # a run that crashes is a result too
            record.error = f"{type(e).__name__}: {e}"[:200]
    record.seconds = time.perf_counter() - start
    mean, std = random_floor(env)
    record.learns = record.completed and math.isfinite(record.metric) and record.metric >= mean + 3 * max(std, 1.0)
    return record


# --- supervised -------------------------------------------------------------------------------------------


def synthetic_cifar(n_train: int = 240, n_valid: int = 80, n_test: int = 80, seed: int = 0) -> Any:
    """CIFAR-shaped data with a learnable signal: each class has its own colour (per-channel mean), plus noise.

    :return: :class:`alrao_rl.supervised.train.CifarData`.
    """
    from alrao_rl.supervised.cifar import channel_stats
    from alrao_rl.supervised.train import CifarData

    g = torch.Generator().manual_seed(seed)
    colours = torch.randint(40, 216, (10, 3), generator=g).float()

    def part(n: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(0, 10, (n,), generator=g)
        noise = torch.randn(n, 3, 32, 32, generator=g) * 30
        images = (colours[labels][:, :, None, None] + noise).clamp(0, 255).to(torch.uint8)
        return images, labels

    (tx, ty), (vx, vy), (sx, sy) = part(n_train), part(n_valid), part(n_test)
    mean, std = channel_stats(tx)
    return CifarData(tx, ty, vx, vy, sx, sy, mean, std)


PTB_TEXT = [
    " no it was n't black monday ",
    " but while the new york stock exchange did n't fall apart friday as the dow jones industrial average plunged",
    " N points most of it in the final hour it barely managed to stay this side of chaos ",
    " some circuit breakers installed after the october N crash failed their first test traders say ",
    " unable to cool the selling panic in both stocks and futures ",
    " the N stock specialist firms on the big board floor the buyers and sellers of last resort ",
]


def synthetic_ptb(folder: str) -> Any:
    """A few PTB sentences as train (repeated), validation and test files, read at character level."""
    from alrao_rl.supervised.train import prepare_ptb

    paths = []
    for name, lines in (("train", PTB_TEXT * 4), ("valid", PTB_TEXT[:3]), ("test", PTB_TEXT[3:])):
        path = os.path.join(folder, f"ptb.{name}.txt")
        with open(path, "w") as f:
            f.write("\n".join(lines) + "\n")
        paths.append(path)
    return prepare_ptb(*paths, level="char")


def run_supervised(task: str, method: str, rate: float, seed: int, epochs: int, data: Any) -> Record:
    """One CIFAR or PTB run (Alrao with ``eta_max = rate``, or SGD with ``lr = rate``), instrumented."""
    import alrao_rl.supervised.train as sup
    from agents.compare import uniform_loss

    record = Record(task, method, rate, seed)

    def wrap(original: Callable[..., Any]) -> Callable[..., Any]:
        def train_step(net: Any, optimizer: Any, *args: Any, **kwargs: Any) -> Any:
            loss, hidden = original(net, optimizer, *args, **kwargs)
            _count_loss(record, float(loss))
            if net.alrao and _switch_is_bad(net.model.switch):
                record.nan_switch += 1
            if net.alrao:
                record.frozen_units = optimizer.frozen_units()
            return loss, hidden

        return train_step

    options: dict[str, Any] = {"eta_max": rate} if method == "alrao" else {"lr": rate}
    if task == "cifar":
        options.update(width=0.0625, batch_size=16, eval_batch_size=200)
    else:
        options.update(batch_size=4, bptt=35)
    config = sup.TrainConfig(
        task=task, method=method, seed=seed, epochs=epochs, patience=epochs, device="cpu", **options
    )
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as logdir, _patched(sup, "train_step", wrap):
        try:
            summary = sup.train_classifier(config, data, logdir, progress=False)
            record.completed = summary is not None
            with open(os.path.join(logdir, "evals.csv")) as f:
                rows = [line.split(",") for line in f.read().splitlines()[1:]]
            valid = [float(r[2]) for r in rows]
            record.nan_output = sum(math.isnan(v) for v in valid)
            finite = [v for v in valid if math.isfinite(v)]
            record.metric = min(finite) if finite else math.nan
            record.nan_checkpoint = _checkpoint_has_nan(os.path.join(logdir, "checkpoint.pt"))
        except Exception as e:
            record.error = f"{type(e).__name__}: {e}"[:200]
    record.seconds = time.perf_counter() - start
    record.learns = record.completed and math.isfinite(record.metric) and record.metric < uniform_loss(task, data)
    return record


# --- report -----------------------------------------------------------------------------------------------


def _fmt_rate(rate: float) -> str:
    return f"{rate:g}"


def table(records: list[Record], task: str, metric_name: str) -> str:
    """A markdown table: one row per (method, rate), aggregated over seeds."""
    lines = [
        f"| method | rate | runs completed | NaN in loss (steps) | inf loss (steps) | NaN in switch | NaN in output "
        f"| NaN in checkpoint | learns | {metric_name} per seed |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, float], list[Record]] = {}
    for r in records:
        if r.task == task:
            groups.setdefault((r.method, r.rate), []).append(r)
    for (method, rate), rs in sorted(groups.items(), key=lambda kv: (METHODS.index(kv[0][0]), kv[0][1])):
        n = len(rs)
        values = ", ".join("error" if r.error else f"{r.metric:.3g}" for r in rs)
        label = "Alrao, eta_max" if method == "alrao" else "SGD, lr"
        lines.append(
            f"| {label} | {_fmt_rate(rate)} | {sum(r.completed for r in rs)}/{n} "
            f"| {sum(r.nan_loss > 0 for r in rs)}/{n} ({sum(r.nan_loss for r in rs)}) "
            f"| {sum(r.inf_loss > 0 for r in rs)}/{n} ({sum(r.inf_loss for r in rs)}) "
            f"| {sum(r.nan_switch > 0 for r in rs)}/{n} | {sum(r.nan_output > 0 for r in rs)}/{n} "
            f"| {sum(r.nan_checkpoint for r in rs)}/{n} | {sum(r.learns for r in rs)}/{n} | {values} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the matrix; print the tables; exit status 1 if an Alrao run crashed or let a NaN through."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 seeds and short runs (a few minutes)")
    parser.add_argument("--seeds", type=int, default=None, help="seeds per cell (default: 5; --quick 3)")
    parser.add_argument("--rates", default=",".join(_fmt_rate(r) for r in RATES), help="comma-separated rates")
    parser.add_argument("--tasks", default="dqn,cifar,ptb", help="comma-separated: dqn, cifar, ptb")
    parser.add_argument("--dqn-steps", type=int, default=None, help="DQN steps per run (default 20000; --quick 4000)")
    parser.add_argument("--epochs", type=int, default=None, help="supervised epochs (default 8; --quick 4)")
    args = parser.parse_args(argv)
    seeds = args.seeds or (3 if args.quick else 5)
    rates = [float(r) for r in args.rates.split(",")]
    tasks = [t.strip() for t in args.tasks.split(",")]
    dqn_steps = args.dqn_steps or (4000 if args.quick else 20_000)
    epochs = args.epochs or (4 if args.quick else 8)
    torch.set_num_threads(1)
    warnings.simplefilter("ignore")  # diverging heads and runs warn by design; the tables count what matters

    records: list[Record] = []
    start = time.perf_counter()
    for task in tasks:
        with tempfile.TemporaryDirectory() as tmp:
            data = synthetic_cifar() if task == "cifar" else synthetic_ptb(tmp) if task == "ptb" else None
            for rate in rates:
                for method in METHODS:
                    for seed in range(seeds):
                        if task == "dqn":
                            r = run_dqn(method, rate, seed, dqn_steps)
                        else:
                            r = run_supervised(task, method, rate, seed, epochs, data)
                        records.append(r)
                        status = "error: " + r.error if r.error else f"{r.metric:.3g}"
                        print(f"  {task} {method} {rate:g} seed {seed}: {status} ({r.seconds:.1f} s)", file=sys.stderr)

    print(
        f"# Divergence matrix ({'quick' if args.quick else 'full'}: {seeds} seeds, DQN {dqn_steps:,} steps, "
        f"{epochs} epochs; {(time.perf_counter() - start) / 60:.1f} min)\n"
    )
    if "dqn" in tasks:
        mean, std = random_floor("CartPole-v1")
        print(f"## DQN, CartPole-v1 (learns: final greedy return >= random {mean:.1f} + 3 x {std:.1f})\n")
        print(table(records, "dqn CartPole-v1", "final return") + "\n")
    if "cifar" in tasks:
        print(f"## CIFAR adapter, synthetic colour classes (learns: best valid loss < ln 10 = {math.log(10):.3f})\n")
        print(table(records, "cifar", "best valid loss (nats)") + "\n")
    if "ptb" in tasks:
        print("## PTB adapter, character LSTM on a few sentences (learns: best valid loss < log2 |vocabulary|)\n")
        print(table(records, "ptb", "best valid loss (bits)") + "\n")
    alrao = [r for r in records if r.method == "alrao"]
    sgd = [r for r in records if r.method == "sgd"]
    bad = [r for r in alrao if r.error or not r.completed or r.any_nan]
    print(
        f"Alrao: {sum(r.completed for r in alrao)}/{len(alrao)} runs completed, "
        f"{sum(r.any_nan for r in alrao)} let a NaN through, {sum(r.learns for r in alrao)}/{len(alrao)} learn. "
        f"SGD at the same rates: {sum(r.completed for r in sgd)}/{len(sgd)} completed, "
        f"{sum(r.any_nan for r in sgd)} let a NaN through, {sum(r.learns for r in sgd)}/{len(sgd)} learn."
    )
    for r in bad:
        print(f"FAIL: {r.task} alrao eta_max={r.rate:g} seed {r.seed}: {r.error or 'NaN'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
