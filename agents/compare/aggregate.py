"""A suite's summary across envs: normalized scores, rliable's aggregates, ``summary.md`` and ``aggregate.png``.

**Normalized score** of a run on an env (Agarwal et al. 2021's convention, with the best SGD rate as the
reference)::

    s = (R - R_random) / (R_bestSGD - R_random)

``R``: the run's test return; ``R_random``: the mean return of a uniformly random policy (the env's failure
floor); ``R_bestSGD``: the mean test return of SGD at the rate selected on selection episodes only. ``s = 1``:
as good as the best rate of the grid; ``s = 0``: as good as a random policy. An env where the best SGD rate is
no better than a random policy has no reference and is left out of the aggregates (said in the summary).

**Aggregates** (the :mod:`rliable` library, on the ``[runs, envs]`` matrix of normalized scores of each
method): the interquartile mean (IQM) and the mean with 95% stratified-bootstrap confidence intervals
(runs resampled within each env), the performance profile ``P(s > tau)`` over all runs, and the probability
that Alrao improves on a method, ``P(Alrao > X)`` (Mann-Whitney, averaged over envs) with its interval.

Within one env, the per-method IQM and its interval are :func:`agents.compare.stats.iqm` and
:func:`agents.compare.stats.bootstrap_ci` (rliable's definitions, with a one-task percentile bootstrap
vectorized in numpy; tested against rliable).
"""

from __future__ import annotations

import contextlib
import glob
import json
import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

from .plan import LABELS
from .report import _fmt, _fmt_rate, _table_order
from .runs import RunResult
from .stats import MethodSummary, Metric, random_policy_returns, summarize
from .suite import SuiteEnv
from .sweep import sweep_history

__all__ = ["AGGREGATE_METHODS", "Aggregate", "EnvResult", "HeadsAtEnd", "aggregate", "alrao_heads_at_end",
           "read_env", "write_summary"]

AGGREGATE_METHODS: tuple[str, ...] = ("alrao", "sgd", "adam", "adaqn")
"""Methods aggregated across envs (every env of a suite runs them; ``sgd``: at its selected rate)."""


@dataclass(frozen=True)
class HeadsAtEnd:
    """An Alrao run's heads at the end of training.

    :param seed: the run's seed.
    :param dead: heads marked dead (diverged for good).
    :param winner: the head with the largest averaging weight (the switch's filtered posterior by default).
    :param winner_rate: that head's learning rate ``eta_j``.
    """

    seed: int
    dead: int
    winner: int
    winner_rate: float


def alrao_heads_at_end(logdir: str, seed: int) -> HeadsAtEnd | None:
    """Read :class:`HeadsAtEnd` from an Alrao run's final ``checkpoint.pt`` (None when it has none)."""
    import torch

    from agents.dqn import DQNConfig
    from alrao_rl.checkpoint import CheckpointError, load_checkpoint
    from alrao_rl.rates import log_spaced

    path = os.path.join(logdir, "checkpoint.pt")
    try:
        saved = load_checkpoint(path)
        values = dict(saved["config"])
        values["hidden"] = tuple(values["hidden"])
        config = DQNConfig(**values)
        q_net = saved["agent"]["q_net"]
        dead = q_net["heads.dead"]
        log_weights = q_net["switch.log_filtered" if config.averaging == "filtered" else "switch.log_predictive"]
    except (OSError, CheckpointError, KeyError, TypeError, ValueError):
        return None
    winner = int(torch.as_tensor(log_weights).argmax())
    rates = log_spaced(config.heads, config.eta_min, config.eta_max) * config.effective_lr
    return HeadsAtEnd(seed, int(torch.as_tensor(dead).sum()), winner, float(rates[winner]))


@dataclass
class EnvResult:
    """One env's finished sweep, as the summary reads it.

    :param entry: the env in the suite.
    :param floor: ``R_random``.
    :param rows: per method (table order) the statistics of its test returns (SGD: at the selected rate).
    :param best_rate: SGD's selected rate (None without SGD runs).
    :param heads: Alrao's heads at the end, per seed.
    :param wall_seconds: the sweep's wall time, over every invocation that recorded one (an interrupted
        invocation records none).
    :param train_seconds: the runs' training times summed (a population member counts its share of its
        population's): the core time the sweep needs, however it was split into invocations.
    """

    entry: SuiteEnv
    floor: float
    rows: list[MethodSummary]
    best_rate: float | None
    heads: list[HeadsAtEnd] = field(default_factory=list)
    wall_seconds: float = 0.0
    train_seconds: float = 0.0

    def row(self, method: str) -> MethodSummary | None:
        return next((r for r in self.rows if r.method == method), None)

    @property
    def reference(self) -> float | None:
        """``R_bestSGD``, or None when it is not above ``R_random`` (no reference)."""
        sgd = self.row("sgd")
        if sgd is None or not math.isfinite(sgd.mean) or sgd.mean <= self.floor:
            return None
        return sgd.mean

    def normalized(self, method: str) -> np.ndarray | None:
        """Each run's normalized score, by seed (None without a reference or the method)."""
        row, reference = self.row(method), self.reference
        if row is None or reference is None:
            return None
        return (np.asarray(row.values, dtype=float) - self.floor) / (reference - self.floor)


def read_env(out: str, entry: SuiteEnv, seeds: int, floor_episodes: int = 20, resamples: int = 10_000,
             grid: Sequence[float] | None = None) -> tuple[EnvResult | None, int, int]:
    """Read the finished runs of one env's sweep in ``out/<entry.folder>``.

    :param out: the suite's output folder.
    :param entry: the env.
    :param seeds: the suite's seeds (0..seeds-1).
    :param floor_episodes: random-policy episodes of the failure floor (as the sweep's report).
    :param resamples: bootstrap resamples of the per-method intervals.
    :param grid: SGD's rates the sweep runs (None: the paper's grid).
    :return: the env's result (None until every run has finished), the runs finished and the runs planned.
    """
    from .plan import DEFAULT_SGD_GRID

    rates = list(DEFAULT_SGD_GRID if grid is None else grid)
    planned = {(m, r, s) for m in entry.methods for r in (rates if m == "sgd" else [None]) for s in range(seeds)}
    folder = os.path.join(out, entry.folder)
    results: dict[tuple[str, float | None, int], RunResult] = {}
    for path in glob.glob(os.path.join(folder, "runs", "*", "seed*", "compare.json")):
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            with open(path) as f:
                record = json.load(f)
            spec = record["spec"]
            options = {k: v for k, v in spec["options"]}
            if spec["problem"] != entry.env or options.get("total_steps") != entry.total_steps:
                continue
            result = RunResult.from_json(record["result"])
            key = (result.method, result.lr, result.seed)
            if key in planned:
                results[key] = result
    if len(results) < len(planned):
        return None, len(results), len(planned)
    returns = random_policy_returns(entry.env, floor_episodes)
    floor = float(np.mean(returns))
    metric = Metric("return", True, floor, "random policy")
    ordered = sorted(results.values(), key=lambda r: (r.method, r.lr or 0.0, r.seed))
    rows, best_rate, _ = summarize(ordered, metric, _table_order(entry.methods), resamples)
    heads = [h for r in ordered if r.method == "alrao"
             if (h := alrao_heads_at_end(os.path.join(folder, r.logdir), r.seed)) is not None]
    wall = sum(float(e.get("wall_seconds", 0.0)) for e in sweep_history(folder))
    train = sum(r.wall_seconds for r in ordered if math.isfinite(r.wall_seconds))
    return EnvResult(entry, floor, rows, best_rate, heads, wall, train), len(results), len(planned)


@dataclass
class Aggregate:
    """rliable's aggregates over the envs that have a reference.

    :param envs: the envs aggregated.
    :param methods: the methods aggregated.
    :param scores: per method, the ``[runs, envs]`` normalized scores.
    :param point: per method, ``[IQM, mean]``.
    :param interval: per method, ``[2, 2]``: the lower and upper bounds of ``[IQM, mean]``.
    :param taus: the thresholds of the performance profiles.
    :param profiles: per method, ``P(s > tau)`` over all runs, ``[len(taus)]``.
    :param profile_intervals: per method, ``[2, len(taus)]``.
    :param improvement: per other method ``X``, ``P(Alrao > X)``.
    :param improvement_intervals: per other method, ``[2]``.
    """

    envs: list[str]
    methods: list[str]
    scores: dict[str, np.ndarray]
    point: dict[str, np.ndarray]
    interval: dict[str, np.ndarray]
    taus: np.ndarray
    profiles: dict[str, np.ndarray]
    profile_intervals: dict[str, np.ndarray]
    improvement: dict[str, float]
    improvement_intervals: dict[str, np.ndarray]


@contextlib.contextmanager
def _global_numpy_seed(seed: int) -> Iterator[None]:
    """numpy's global generator seeded with ``seed`` inside the block, restored after it: rliable's stratified
    bootstrap draws its indices with ``np.random.choice`` (its ``random_state`` argument only reaches arch, which
    does not draw them), so this is what makes its intervals reproducible."""
    saved = np.random.get_state()
    np.random.seed(seed)
    try:
        yield
    finally:
        np.random.set_state(saved)


def aggregate(envs: Sequence[EnvResult], resamples: int = 2_000, seed: int = 0) -> Aggregate | None:
    """rliable's IQM and mean with stratified-bootstrap intervals, performance profiles and ``P(Alrao > X)``
    over the envs with a reference (None when no env has one).

    :param envs: the finished envs.
    :param resamples: bootstrap resamples of every interval.
    :param seed: the seed of the bootstraps (:func:`_global_numpy_seed`).
    """
    from rliable import library as rly
    from rliable import metrics

    usable = [e for e in envs if e.reference is not None]
    methods = [m for m in AGGREGATE_METHODS if all(e.normalized(m) is not None for e in usable)]
    if not usable or "alrao" not in methods:
        return None
    scores = {m: np.stack([e.normalized(m) for e in usable], axis=1) for m in methods}  # type: ignore[misc]
    taus = np.linspace(-0.5, 1.5, 81)

    def iqm_and_mean(s: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(s), metrics.aggregate_mean(s)])

    def profile(s: np.ndarray) -> np.ndarray:
        return np.array([np.mean(s > tau) for tau in taus])

    pairs = {m: (scores["alrao"], scores[m]) for m in methods if m != "alrao"}
    with _global_numpy_seed(seed):
        point, interval = rly.get_interval_estimates(scores, iqm_and_mean, reps=resamples)
        profiles, profile_intervals = rly.get_interval_estimates(scores, profile, reps=resamples)
        improvement, improvement_intervals = rly.get_interval_estimates(
            pairs, metrics.probability_of_improvement, reps=resamples)
    return Aggregate([e.entry.env for e in usable], methods, scores, point, interval, taus, profiles,
                     profile_intervals, {m: float(v) for m, v in improvement.items()},
                     {m: np.asarray(v).reshape(2) for m, v in improvement_intervals.items()})


# --- summary.md and aggregate.png ------------------------------------------------------------------------


GOAL = 0.9
"""The goal reported against: Alrao's normalized score >= 0.9 on every env, with no failed Alrao run."""


def _label(method: str, env: EnvResult | None = None) -> str:
    if method == "sgd":
        rate = None if env is None else env.best_rate
        return "SGD, best rate" + ("" if rate is None else f" ({_fmt_rate(rate)})")
    if method == "adam":
        return "Adam (default)"
    return LABELS.get(method, method)


def _heads_cells(env: EnvResult) -> tuple[str, str]:
    if not env.heads:
        return "", ""
    dead = [h.dead for h in env.heads]
    rates = sorted(float(f"{h.winner_rate:.2g}") for h in env.heads)
    median = rates[len(rates) // 2]
    return (f"{np.mean(dead):.1f} ({min(dead)}-{max(dead)})",
            f"{_fmt_rate(median)} ({_fmt_rate(rates[0])}-{_fmt_rate(rates[-1])})")


def _env_table(envs: Sequence[EnvResult]) -> list[str]:
    lines = ["| Env | Method | Test return (mean ± std) | IQM [95% CI] | Normalized score | Failed runs | "
             "Alrao: dead heads, mean (range) | Alrao: switch's winner rate, median (range) |",
             "|---|---|---|---|---|---|---|---|"]
    for env in envs:
        for row in env.rows:
            scores = env.normalized(row.method)
            score = "n/a" if scores is None else f"{np.mean(scores):.2f}"
            dead, winner = _heads_cells(env) if row.method == "alrao" else ("", "")
            name = f"**{_label(row.method, env)}**" if row.method == "alrao" else _label(row.method, env)
            lines.append(f"| {env.entry.env} | {name} | {_fmt(row.mean)} ± {_fmt(row.std)} | "
                         f"{_fmt(row.iqm)} [{_fmt(row.ci[0])}, {_fmt(row.ci[1])}] | {score} | "
                         f"{row.failed}/{row.runs} | {dead} | {winner} |")
    return lines


def _goal_lines(envs: Sequence[EnvResult]) -> list[str]:
    lines = []
    for env in envs:
        alrao, scores = env.row("alrao"), env.normalized("alrao")
        if alrao is None:
            continue
        if scores is None:
            lines.append(f"- {env.entry.env}: no reference (the best SGD rate is no better than a random policy); "
                         f"Alrao failed {alrao.failed}/{alrao.runs} runs.")
            continue
        score = float(np.mean(scores))
        met = score >= GOAL and alrao.failed == 0
        lines.append(f"- {env.entry.env}: normalized score {score:.2f} ({'>=' if score >= GOAL else '<'} {GOAL}), "
                     f"{alrao.failed}/{alrao.runs} failed Alrao runs: **{'met' if met else 'not met'}**.")
    return lines


def _aggregate_lines(agg: Aggregate | None, envs: Sequence[EnvResult]) -> list[str]:
    left_out = [e.entry.env for e in envs if e.reference is None]
    if agg is None:
        return ["No env has a reference yet (a best SGD rate better than a random policy): no aggregate."]
    n_runs = next(iter(agg.scores.values())).shape[0]
    lines = [f"Over {', '.join(agg.envs)} ({n_runs} runs per env and method"
             + (f"; left out for want of a reference: {', '.join(left_out)}" if left_out else "") + "), with "
             "95% stratified-bootstrap intervals (rliable):", "",
             "| Method | IQM of normalized scores [95% CI] | Mean [95% CI] | P(Alrao > method) [95% CI] |",
             "|---|---|---|---|"]
    for m in agg.methods:
        (iqm_, mean), ((iqm_lo, mean_lo), (iqm_hi, mean_hi)) = agg.point[m], agg.interval[m]
        poi = ""
        if m in agg.improvement:
            lo, hi = agg.improvement_intervals[m]
            poi = f"{agg.improvement[m]:.2f} [{lo:.2f}, {hi:.2f}]"
        lines.append(f"| {_label(m)} | {iqm_:.2f} [{iqm_lo:.2f}, {iqm_hi:.2f}] | {mean:.2f} [{mean_lo:.2f}, "
                     f"{mean_hi:.2f}] | {poi} |")
    return lines


def _plot(path: str, agg: Aggregate) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from .plots import _COLORS

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    names = [_label(m) for m in agg.methods]
    ys = np.arange(len(agg.methods))[::-1]
    for y, m in zip(ys, agg.methods, strict=True):
        lo, hi = agg.interval[m][0][0], agg.interval[m][1][0]
        axes[0].barh(y, hi - lo, left=lo, height=0.6, color=_COLORS.get(m, "gray"), alpha=0.6)
        axes[0].plot([agg.point[m][0]] * 2, [y - 0.3, y + 0.3], color="black", lw=2)
    axes[0].set_yticks(ys, names)
    axes[0].axvline(1.0, color="gray", ls=":", lw=1)
    axes[0].set_xlabel("IQM of normalized scores (95% CI)")
    axes[0].set_title("Aggregate (1 = best SGD rate)")
    for m in agg.methods:
        color = _COLORS.get(m, "gray")
        axes[1].plot(agg.taus, agg.profiles[m], color=color, label=_label(m))
        axes[1].fill_between(agg.taus, agg.profile_intervals[m][0], agg.profile_intervals[m][1], color=color,
                             alpha=0.15, lw=0)
    axes[1].set_xlabel("normalized score τ")
    axes[1].set_ylabel("fraction of runs with score > τ")
    axes[1].set_title("Performance profiles")
    axes[1].legend(fontsize=8)
    others = [m for m in agg.methods if m in agg.improvement]
    ys = np.arange(len(others))[::-1]
    for y, m in zip(ys, others, strict=True):
        lo, hi = agg.improvement_intervals[m]
        axes[2].barh(y, hi - lo, left=lo, height=0.6, color=_COLORS.get(m, "gray"), alpha=0.6)
        axes[2].plot([agg.improvement[m]] * 2, [y - 0.3, y + 0.3], color="black", lw=2)
    axes[2].set_yticks(ys, [f"P(Alrao > {_label(m)})" for m in others])
    axes[2].axvline(0.5, color="gray", ls=":", lw=1)
    axes[2].set_xlim(0, 1)
    axes[2].set_xlabel("probability of improvement (95% CI)")
    axes[2].set_title("Alrao against each method")
    fig.suptitle(f"Normalized DQN scores over {', '.join(agg.envs)}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_summary(out: str, suite: str, entries: Sequence[SuiteEnv], seeds: int, command: str,
                  resamples: int = 2_000, floor_episodes: int = 20) -> dict[str, str]:
    """Write ``out/summary.md`` (and ``out/aggregate.png`` once an env has a reference) from the envs finished.

    :param out: the suite's output folder.
    :param suite: the suite's name.
    :param entries: the suite's envs.
    :param seeds: seeds per method and rate.
    :param command: the command that reruns the suite.
    :param resamples: bootstrap resamples of the aggregates.
    :param floor_episodes: random-policy episodes of each env's floor.
    :return: the paths written, by name (``summary``; ``aggregate`` when drawn).
    """
    finished, waiting = [], []
    for entry in entries:
        env, done, planned = read_env(out, entry, seeds, floor_episodes)
        if env is None:
            waiting.append(f"{entry.env} ({done} of {planned} runs finished)")
        else:
            finished.append(env)
    agg = aggregate(finished, resamples) if finished else None
    paths = {"summary": os.path.join(out, "summary.md")}
    lines = [f"# Suite '{suite}': Alrao against the best SGD rate, default Adam and AdaQN", "",
             f"{seeds} seeds per method (and per SGD rate), DQN with the same defaults for every method and env (no "
             f"per-env tuning). Each env's sweep has its own report: "
             + ", ".join(f"[{e.env}]({e.folder}/report.md) ({e.total_steps:,} steps)" for e in entries) + ".",
             "", f"- Command: `{command}` (resumable: run it again to continue or extend).",
             "- Test return: 10 new greedy episodes of each run's final policy; SGD's rate is selected on "
             "separate selection episodes. Normalized score: (R − R_random) / (R_bestSGD − R_random): 1 is the "
             "best SGD rate of the grid {1e-5, ..., 10}, 0 a uniformly random policy."]
    if waiting:
        lines.append(f"- Not finished yet: {'; '.join(waiting)}.")
    lines += ["", "## Per env", ""]
    lines += _env_table(finished) if finished else ["No env has finished yet."]
    lines += ["", f"## Goal: Alrao's normalized score >= {GOAL} on every env, no failed Alrao run", ""]
    lines += _goal_lines(finished) or ["No env has finished yet."]
    lines += ["", "## Across envs", ""]
    lines += _aggregate_lines(agg, finished)
    if agg is not None:
        paths["aggregate"] = os.path.join(out, "aggregate.png")
        _plot(paths["aggregate"], agg)
        lines += ["", "![aggregate](aggregate.png)  \nLeft: IQM of the normalized scores with its 95% interval "
                  "(black: the estimate). Middle: the fraction of runs whose normalized score exceeds τ. Right: "
                  "the probability that an Alrao run beats a run of the method on the same env."]
    if finished:
        train = sum(e.train_seconds for e in finished)
        lines += ["", "## Compute", "", "Training time of the runs, summed (core time; a population member counts "
                  "its share of its population's): " + ", ".join(f"{e.entry.env} {e.train_seconds / 3600:.1f} h"
                                                                 for e in finished)
                  + f"; {train / 3600:.1f} core-hours in all. Wall time of the recorded invocations of each "
                  "sweep on this machine: " + ", ".join(f"{e.entry.env} {e.wall_seconds / 60:.0f} min"
                                                         for e in finished) + "."]
    with open(paths["summary"] + ".tmp", "w") as f:
        f.write("\n".join(lines) + "\n")
    os.replace(paths["summary"] + ".tmp", paths["summary"])
    return paths
