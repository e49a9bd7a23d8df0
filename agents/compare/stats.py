"""Scoring the runs: the failure floors (a random policy's return, the uniform prediction's loss),
:class:`Metric`, why a run failed, SGD's rate selected on selection data only, and the statistics of each
method over its runs (mean, standard deviation, IQM with a bootstrap confidence interval)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .plan import GRID_METHODS, LABELS, RANDOM_SEED_BASE
from .runs import RunResult

# --- failure floor ---------------------------------------------------------------------------------


def random_policy_returns(env_id: str, episodes: int = 20, n_bins: int = 5, continuous: bool = False) -> list[float]:
    """Returns of a uniformly random policy (episodes seeded ``3_000_000 + k``): the failure floor of
    an env is their mean.

    :param env_id: gymnasium id.
    :param episodes: number of episodes.
    :param n_bins: values per continuous action dimension (as the DQN runs use).
    :param continuous: draw continuous actions uniformly from the env's own ``Box`` (SAC/TD3 runs).
    """
    import gymnasium as gym

    from envs import make_env

    if continuous:
        env = gym.make(env_id)
        env.action_space.seed(RANDOM_SEED_BASE)
    else:
        env = make_env(env_id, RANDOM_SEED_BASE, n_bins=n_bins)
    returns = []
    try:
        for k in range(episodes):
            env.reset(seed=RANDOM_SEED_BASE + k)
            total, done = 0.0, False
            while not done:
                _, reward, terminated, truncated, _ = env.step(env.action_space.sample())
                total += float(reward)
                done = terminated or truncated
            returns.append(total)
    finally:
        env.close()
    return returns


def uniform_loss(task: str, data: Any) -> float:
    """The loss of the uniform prediction: ``ln 10`` nats (CIFAR-10), ``log2 |vocabulary|`` bits (PTB)."""
    return math.log(10.0) if task == "cifar" else math.log2(len(data.vocab))


# --- statistics ------------------------------------------------------------------------------------


def iqm(values: Sequence[float]) -> float:
    """Interquartile mean: the mean of the sorted values after dropping ``floor(n / 4)`` at each end
    (``scipy.stats.trim_mean(values, 0.25)``; the plain mean for ``n < 4``). NaN for no value."""
    x = np.sort(np.asarray(values, dtype=float))
    n = x.size
    if n == 0:
        return math.nan
    k = n // 4
    return float(x[k : n - k].mean())


def bootstrap_ci(
    values: Sequence[float], resamples: int = 10_000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile-bootstrap confidence interval of the :func:`iqm`.

    Draws ``idx = numpy.random.default_rng(seed).integers(0, n, size=(resamples, n))``, takes the IQM
    of each resample ``values[idx[b]]`` and returns the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` quantiles (``numpy.quantile``, linear interpolation).

    :param values: the runs' values.
    :param resamples: bootstrap resamples.
    :param confidence: coverage of the interval.
    :param seed: seed of the generator.
    :return: ``(low, high)``; NaNs for no value.
    """
    x = np.asarray(values, dtype=float)
    n = x.size
    if n == 0:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, n, size=(resamples, n))
    samples = np.sort(x[idx], axis=1)
    k = n // 4
    stats = samples[:, k : n - k].mean(axis=1)
    low, high = np.quantile(stats, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(low), float(high)


@dataclass(frozen=True)
class Metric:
    """How runs are scored.

    :param name: ``"return"`` (RL) or ``"loss"`` (supervised).
    :param higher_is_better: True for returns.
    :param floor: the failure floor (random-policy return, uniform-prediction loss).
    :param floor_label: what the floor is, in words.
    :param unit: unit of the values, for labels.
    """

    name: str
    higher_is_better: bool
    floor: float
    floor_label: str
    unit: str = ""

    def or_floor(self, value: float) -> float:
        """The value, or the floor when it is not finite (a diverged run scores like the floor)."""
        return value if math.isfinite(value) else self.floor

    def key(self, value: float) -> float:
        """Sort key: larger is better."""
        return value if self.higher_is_better else -value


def failure_reason(result: RunResult, metric: Metric) -> str:
    """Why a run counts as failed (empty when it does not).

    A run fails when it produced no result, when its selection or test value is not finite, when the
    final network's outputs are not finite (divergence), when its final greedy policy takes a single
    action throughout the test episodes (a dead network: RL), or when its test value is worse than the
    floor.
    """
    if result.error:
        return f"error: {result.error}"
    if not math.isfinite(result.selection) or not math.isfinite(result.test):
        which = "selection" if not math.isfinite(result.selection) else "test"
        return f"diverged: non-finite {which} {metric.name}"
    worse = result.test < metric.floor if metric.higher_is_better else result.test > metric.floor
    if not result.outputs_finite:
        return "diverged: the final network's outputs are not finite"
    if result.distinct_actions == 1:
        return "degenerate: the final greedy policy took one single action in every test episode"
    if worse:
        relation = "below" if metric.higher_is_better else "above"
        return f"test {metric.name} {result.test:.4g} {relation} the floor {metric.floor:.4g} ({metric.floor_label})"
    return ""


def select_sgd_rate(results: Sequence[RunResult], metric: Metric) -> tuple[float | None, dict[float, float]]:
    """The grid method's rate (SGD's; SAC/TD3: the critics' Adam rate) with the best mean over seeds of the
    *selection* value (test values are never read).

    Non-finite selection values count as the floor. Ties go to the smaller rate.

    :param results: any results; only the grid method's are used (:data:`~agents.compare.plan.GRID_METHODS`).
    :param metric: the scoring.
    :return: the chosen rate (None without grid runs) and each rate's mean selection value.
    """
    by_rate: dict[float, list[float]] = {}
    for r in results:
        if r.method in GRID_METHODS and r.lr is not None:
            by_rate.setdefault(r.lr, []).append(metric.or_floor(r.selection))
    means = {rate: float(np.mean(v)) for rate, v in sorted(by_rate.items())}
    if not means:
        return None, means
    best = max(means, key=lambda rate: (metric.key(means[rate]), -rate))
    return best, means


@dataclass
class MethodSummary:
    """One row of the main table.

    :param method: method name.
    :param label: name in the table.
    :param lr: SGD's selected rate (None for the other methods).
    :param runs: number of runs.
    :param mean: mean test value over seeds (non-finite values as the floor).
    :param std: their standard deviation (``ddof=0``, as the paper's "standard deviation over runs").
    :param iqm: interquartile mean.
    :param ci: 95% bootstrap confidence interval of the IQM.
    :param failed: number of failed runs.
    :param accuracy: supervised: mean and std of the test accuracy.
    :param values: the test values that entered the statistics.
    """

    method: str
    label: str
    lr: float | None
    runs: int
    mean: float
    std: float
    iqm: float
    ci: tuple[float, float]
    failed: int
    accuracy: tuple[float, float] | None = None
    values: list[float] = field(default_factory=list)


def _summary_of(method: str, runs: Sequence[RunResult], metric: Metric, lr: float | None,
                resamples: int, seed: int) -> MethodSummary:
    values = [metric.or_floor(r.test) for r in runs]
    accuracies = [r.test_accuracy for r in runs if math.isfinite(r.test_accuracy)]
    accuracy = (float(np.mean(accuracies)), float(np.std(accuracies))) if accuracies else None
    return MethodSummary(
        method=method,
        label=LABELS.get(method, method),
        lr=lr,
        runs=len(runs),
        mean=float(np.mean(values)) if values else math.nan,
        std=float(np.std(values)) if values else math.nan,
        iqm=iqm(values),
        ci=bootstrap_ci(values, resamples, seed=seed),
        failed=sum(bool(failure_reason(r, metric)) for r in runs),
        accuracy=accuracy if metric.name == "loss" else None,
        values=values,
    )


def summarize(
    results: Sequence[RunResult], metric: Metric, methods: Sequence[str], resamples: int = 10_000, seed: int = 0
) -> tuple[list[MethodSummary], float | None, dict[float, float]]:
    """Per method, the statistics of the test values; SGD at its selected rate.

    :param results: every run's result.
    :param metric: the scoring.
    :param methods: methods in table order.
    :param resamples: bootstrap resamples.
    :param seed: bootstrap seed.
    :return: the rows, SGD's selected rate and each SGD rate's mean selection value.
    """
    best_rate, selection_means = select_sgd_rate(results, metric)
    rows = []
    for method in methods:
        grid = method in GRID_METHODS
        runs = [r for r in results if r.method == method and (not grid or r.lr == best_rate)]
        lr = best_rate if grid else None
        rows.append(_summary_of(method, runs, metric, lr, resamples, seed))
    return rows, best_rate, selection_means
