"""The sweep's tables: ``results.csv`` (one row per run) and the text of ``report.md`` (the layout of the
paper's Table 1, the SGD grid, the failed runs, the protocol); :class:`SweepInfo`, what the report says
about the sweep; and the number formats the figures share."""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .plan import BASE_METHODS, GRID_METHODS, GRID_NAMES, LABELS, PEERS, RL_METHODS, grid_method
from .runs import RunResult
from .stats import MethodSummary, Metric, failure_reason


@dataclass
class SweepInfo:
    """What the report says about the sweep.

    :param task: ``"rl"``, ``"cifar"`` or ``"ptb"``.
    :param problem: env id or data set name.
    :param seeds: the seeds.
    :param methods: methods, in table order.
    :param sgd_grid: SGD's rates.
    :param eta_min: Alrao's lower rate.
    :param eta_max: Alrao's upper rate.
    :param heads: Alrao's heads.
    :param adaqn_rates: AdaQN's Adam rates (RL).
    :param adaqn_window: AdaQN's gradient steps per selection (RL).
    :param alrao: Alrao's optimizer and targets in words.
    :param budget: the training budget in words (e.g. ``"30,000 environment steps"``).
    :param selection: how selection values are obtained, in words.
    :param test: how test values are obtained, in words.
    :param floor_detail: how the floor was measured, in words.
    :param wall_seconds: wall time of the invocation that wrote the report.
    :param command: the command line.
    :param ran: runs trained by that invocation.
    :param history: the invocations that trained runs (:func:`sweep_history`).
    """

    task: str
    problem: str
    seeds: list[int]
    methods: list[str]
    sgd_grid: list[float]
    eta_min: float
    eta_max: float
    heads: int
    budget: str
    selection: str
    test: str
    floor_detail: str
    wall_seconds: float = math.nan
    command: str = ""
    ran: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    adaqn_rates: list[float] = field(default_factory=list)
    adaqn_window: int = 0
    alrao: str = ""
    """What Alrao is beyond its interval, in words (e.g. ``"AlraoAdam, PopArt targets"``; empty: AlraoSGD)."""


def write_results_csv(path: str, results: Sequence[RunResult], metric: Metric) -> None:
    """One row per run: method, lr, seed, selection and test values, failed, reason, wall time, folder.

    RL rows also hold the spread of the test returns and the number of distinct test actions; supervised
    rows the test accuracy.
    """
    m = metric.name
    rl = m == "return"
    details = ["test_return_std", "distinct_actions"] if rl else ["test_accuracy"]
    header = ["method", "lr", "seed", f"selection_{m}", f"test_{m}", *details, "failed", "reason", "wall_seconds",
              "logdir"]
    with open(path, "w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(header)
        for r in sorted(results, key=_order_key):
            reason = failure_reason(r, metric)
            actions = "" if r.distinct_actions is None else r.distinct_actions
            values = [_fmt_raw(r.test_std), actions] if rl else [_fmt_raw(r.test_accuracy)]
            writer.writerow([r.method, "" if r.lr is None else f"{r.lr:g}", r.seed, _fmt_raw(r.selection),
                             _fmt_raw(r.test), *values, int(bool(reason)), reason, _fmt_raw(r.wall_seconds),
                             r.logdir])


def _order_key(r: RunResult) -> tuple[int, float, int]:
    order = {m: i for i, m in enumerate((*BASE_METHODS, *RL_METHODS, *PEERS))}
    return order.get(r.method, 99), r.lr or 0.0, r.seed


def _fmt_raw(value: float) -> str:
    return "nan" if not math.isfinite(value) else f"{value:.6g}"


def _fmt(value: float, digits: int = 3) -> str:
    """Significant digits, plain notation for numbers of a readable size."""
    if not math.isfinite(value):
        return "nan"
    if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
        return f"{value:.{digits}g}"
    if abs(value) >= 10 ** digits:
        return f"{value:.0f}"
    return f"{value:.{digits}g}" if abs(value) < 1 else f"{value:.{max(digits - len(str(int(abs(value)))), 0)}f}"


def _fmt_rate(rate: float) -> str:
    """``1e-5``, ``1e-1``, ``1``, ``10``: the paper's way of writing rates."""
    if 1 <= rate < 1000:
        return f"{rate:g}"
    mantissa, exponent = f"{rate:.6e}".split("e")
    return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"


def _table_order(methods: Sequence[str]) -> list[str]:
    """The paper's row order: SGD, Adam, Alrao, then AdaQN and the peers as given."""
    first = ("sgd", "critic-adam", "adam", "alrao")
    return [m for m in first if m in methods] + [m for m in methods if m not in first]


def _wall_text(info: SweepInfo) -> str:
    """Wall time of the invocations that trained the runs, and of this one."""
    text = ""
    if info.history:
        wall = sum(float(e.get("wall_seconds", 0.0)) for e in info.history)
        ran = sum(int(e.get("ran", 0)) for e in info.history)
        workers = sorted({str(e.get("workers", "?")) for e in info.history})
        text = (f"Wall time: {wall / 60:.1f} min to train {ran} runs with {'/'.join(workers)} parallel workers "
                f"({len(info.history)} invocation{'s' if len(info.history) != 1 else ''}). ")
    if math.isfinite(info.wall_seconds):
        text += f"This report's invocation trained {info.ran} runs in {info.wall_seconds / 60:.1f} min."
    return text.strip()


def _lr_cell(row: MethodSummary, info: SweepInfo) -> str:
    if row.method in GRID_METHODS:
        return "none" if row.lr is None else f"{_fmt_rate(row.lr)} (selected)"
    if row.method == "adam":
        return ADAM_DEFAULTS.get(info.task, "1e-3 (default)")
    if row.method == "alrao":
        return f"[{_fmt_rate(info.eta_min)}, {_fmt_rate(info.eta_max)}], {info.heads} heads" + (
            f", {info.alrao}" if info.alrao else "")
    if row.method == "adaqn":
        return _adaqn_rates(info)
    return "default (tuning-free)"


ADAM_DEFAULTS: dict[str, str] = {"sac": "3e-4 (SB3's default, every network)",
                                 "td3": "1e-3 (SB3's default, every network)"}
"""The ``LR`` cell of default Adam where it is not torch's 1e-3."""


def _adaqn_rates(info: SweepInfo) -> str:
    """``{1e-5, 1e-4, 1e-3, 1e-2}, 4 nets``: AdaQN's grid of Adam rates."""
    rates = info.adaqn_rates
    return f"{{{', '.join(_fmt_rate(x) for x in rates)}}}, {len(rates)} nets"


def _report_text(
    results: Sequence[RunResult],
    rows: Sequence[MethodSummary],
    best_rate: float | None,
    selection_means: dict[float, float],
    metric: Metric,
    info: SweepInfo,
    resamples: int,
) -> str:
    m = metric.name
    grid = grid_method(info.task)
    g = GRID_NAMES[grid]
    unit = f", {metric.unit}" if metric.unit else ""
    seeds = ", ".join(str(s) for s in info.seeds)
    names = [LABELS.get(x, x) for x in info.methods]
    lines = [
        f"# {info.problem}: {', '.join(names)}",
        "",
        f"{len(info.seeds)} seed{'s' if len(info.seeds) != 1 else ''} ({seeds}), {info.budget} per run. "
        f"The layout of the paper's Table 1: {g}'s "
        f"rate is selected on {info.selection}; every method is then reported on {info.test}.",
        "",
    ]
    if m == "return":
        lines += ["| Method | LR | Test return (mean ± std) | IQM [95% CI] | Failed runs |", "|---|---|---|---|---|"]
    else:
        lines += [
            f"| Method | LR | Test loss{unit} (mean ± std) | Top-1 % (mean ± std) | IQM loss [95% CI] | Failed runs |",
            "|---|---|---|---|---|---|",
        ]
    for row in rows:
        label = row.label + (" (default)" if row.method == "adam" else "")
        if row.method in GRID_METHODS:
            label = "SGD with optimal LR" if row.method == "sgd" else f"{g} with the selected rate"
        stats = f"{_fmt(row.mean)} ± {_fmt(row.std)}"
        interval = f"{_fmt(row.iqm)} [{_fmt(row.ci[0])}, {_fmt(row.ci[1])}]"
        cells = [label, _lr_cell(row, info), stats]
        if m == "loss":
            acc = row.accuracy
            cells.append("nan" if acc is None else f"{100 * acc[0]:.1f} ± {100 * acc[1]:.1f}")
        cells += [interval, f"{row.failed}/{row.runs}"]
        lines.append("| " + " | ".join(cells) + " |")
    lines.append("")
    by_method = {row.method: row for row in rows}
    alrao, sgd = by_method.get("alrao"), by_method.get(grid)
    if alrao is not None and sgd is not None and sgd.runs and alrao.runs:
        ratio = alrao.mean / sgd.mean if sgd.mean != 0 else math.nan
        line = (f"**Ratio Alrao / best {g}** (mean test {m}): {_fmt(alrao.mean)} / {_fmt(sgd.mean)} = "
                f"{ratio:.3f}")
        if m == "return" and alrao.mean < 0 and sgd.mean < 0:
            line += f" (returns are negative here: above 1 means Alrao's return is lower than {g}'s)"
        elif m == "return":
            line += f" (above 1: Alrao's return is higher than {g}'s)"
        else:
            line += f" (below 1: Alrao's loss is lower than {g}'s)"
        lines.append(line + ".")
        gain = sgd.mean - metric.floor
        if m == "return" and gain != 0:
            lines += ["", f"Alrao's gain over a random policy as a fraction of the best {g} rate's: "
                          f"({_fmt(alrao.mean)} − {_fmt(metric.floor)}) / ({_fmt(sgd.mean)} − {_fmt(metric.floor)}) "
                          f"= {(alrao.mean - metric.floor) / gain:.2f} (1: as good as the best {g} rate; 0: as good "
                          f"as a random policy)."]
        lines.append("")

    if selection_means:
        lines += [
            f"## The {g} grid",
            "",
            f"The rate with the best selection {m} (mean over seeds) is selected; its test {m} is only read "
            f"afterwards.",
            "",
            f"| {g} rate | Selection {m} (mean over seeds) | Test {m} (mean ± std) | Failed runs |",
            "|---|---|---|---|",
        ]
        for rate, mean_selection in selection_means.items():
            runs = [r for r in results if r.method == grid and r.lr == rate]
            values = [metric.or_floor(r.test) for r in runs]
            failed = sum(bool(failure_reason(r, metric)) for r in runs)
            name = f"**{_fmt_rate(rate)}** (selected)" if rate == best_rate else _fmt_rate(rate)
            lines.append(f"| {name} | {_fmt(mean_selection)} | {_fmt(float(np.mean(values)))} ± "
                         f"{_fmt(float(np.std(values)))} | {failed}/{len(runs)} |")
        lines.append("")

    failures = [(r, failure_reason(r, metric)) for r in sorted(results, key=_order_key)]
    failures = [(r, why) for r, why in failures if why]
    lines += ["## Failed runs", ""]
    if failures:
        lines += [f"- {r.label}, seed {r.seed}: {why}" for r, why in failures]
    else:
        lines.append("None.")
    lines.append("")

    total = sum(r.wall_seconds for r in results if math.isfinite(r.wall_seconds))
    lines += [
        "## Protocol",
        "",
        f"- Methods: {', '.join(names)}. {g} grid: {{{', '.join(_fmt_rate(x) for x in info.sgd_grid)}}}. "
        f"Alrao: per-unit rates log-uniform in [{_fmt_rate(info.eta_min)}, {_fmt_rate(info.eta_max)}], "
        f"{info.heads} heads{', ' + info.alrao if info.alrao else ''}. Adam and the tuning-free peers run with their "
        f"default settings."
        + (f" AdaQN: one network per Adam rate of {_adaqn_rates(info)}, trained on the same minibatches "
           f"against one target, which follows the network with the lowest TD loss summed over each "
           f"{info.adaqn_window} gradient steps." if "adaqn" in info.methods else ""),
        f"- Selection: {info.selection}. Test: {info.test}.",
        f"- Failed run: an error during the run; a non-finite selection or test {m}, or non-finite outputs of "
        f"the final network (divergence); "
        + ("a final greedy policy that takes one single action in every test episode (a dead network); "
           if m == "return" else "")
        + f"or a test "
        f"{m} worse than the floor, {_fmt(metric.floor)}{' ' + metric.unit if metric.unit else ''}: "
        f"{info.floor_detail}. Failed runs stay in every "
        f"statistic; a non-finite value enters the means, the IQM and {g}'s selection as the floor.",
        f"- Statistics over the runs of each method (seeds): mean ± standard deviation (ddof 0); IQM = mean of the "
        f"middle half of the sorted values (floor(n/4) dropped at each end; the plain mean below 4 runs); 95% "
        f"percentile-bootstrap CI of the IQM from {resamples:,} resamples of the runs "
        f"(numpy.random.default_rng(0)).",
        f"- Compute: {total / 60:.1f} CPU-minutes of training over {len(results)} runs. " + _wall_text(info),
    ]
    if info.command:
        lines.append(f"- Command: `{info.command}`")
    x_label = "environment steps" if m == "return" else "epochs"
    lines += [
        "",
        "## Figures",
        "",
        f"![learning curves](curves.png)  \nSelection {m} against {x_label}: mean over seeds, band from the "
        f"lowest to the highest seed.",
        "",
        f"![test {m} against the {g} rate](rates.png)  \nFinal test {m} against {g}'s learning rate (dots: seeds; "
        f"line: mean); Alrao, Adam, AdaQN and the peers as horizontal bands (mean ± std): what the grid search "
        "costs.",
        "",
        "![Alrao switch posterior](posterior.png)  \nAlrao's switch posterior over its heads during training "
        "(one panel per seed; the paper's Figure 4).",
        "",
    ]
    return "\n".join(lines)
