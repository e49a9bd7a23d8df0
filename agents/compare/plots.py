"""The sweep's figures: the learning curves (``curves.png``), the final test value against SGD's rate
(``rates.png``) and Alrao's switch posterior over its heads (``posterior.png``)."""

from __future__ import annotations

import contextlib
import csv
import math
import os
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from .plan import GRID_NAMES, LABELS, grid_method
from .report import SweepInfo, _fmt_rate
from .runs import RunResult, _finite
from .stats import MethodSummary, Metric, failure_reason

_COLORS = {"alrao": "tab:red", "adam": "tab:blue", "sgd": "tab:green", "critic-adam": "tab:green",
           "prodigy": "tab:purple", "dadapt-sgd": "tab:brown", "dadapt-adam": "tab:pink", "dog": "tab:olive",
           "sf-sgd": "tab:cyan", "sf-adamw": "tab:orange", "adaqn": "tab:gray"}


def _read_curves(
    out: str, results: Sequence[RunResult], metric: Metric
) -> dict[str, tuple[np.ndarray, list[np.ndarray]]]:
    """Per run label, the x values and each seed's curve (selection return or validation loss)."""
    x_col, y_col = ("step", "eval_return_mean") if metric.name == "return" else ("epoch", "valid_loss")
    raw: dict[str, list[dict[float, float]]] = {}
    for r in results:
        path = os.path.join(out, r.logdir, "evals.csv")
        if not r.logdir or not os.path.exists(path):
            continue
        with open(path, newline="") as f:
            curve = {float(row[x_col]): _finite(row[y_col]) for row in csv.DictReader(f)}
        raw.setdefault(r.label, []).append(curve)
    curves = {}
    for label, runs in raw.items():
        xs = np.array(sorted({x for c in runs for x in c}))
        curves[label] = (xs, [np.array([c.get(x, math.nan) for x in xs]) for c in runs])
    return curves


def _title(info: SweepInfo, what: str) -> str:
    n = len(info.seeds)
    return f"{info.problem}: {what} ({n} seed{'s' if n != 1 else ''})"


def _plot_curves(
    path: str,
    curves: dict[str, tuple[np.ndarray, list[np.ndarray]]],
    metric: Metric,
    info: SweepInfo,
    best_rate: float | None,
) -> None:
    from matplotlib.figure import Figure

    fig = Figure(figsize=(9, 6), dpi=120, layout="constrained")
    ax = fig.subplots()
    grid = grid_method(info.task)
    g = GRID_NAMES[grid]
    best_label = None if best_rate is None else f"{grid}-lr{best_rate:g}"
    others = sorted((label for label in curves if label.startswith(f"{grid}-lr") and label != best_label),
                    key=lambda s: float(s.split("lr")[1]))
    shades = np.linspace(0.75, 0.35, max(len(others), 1))
    all_values: list[float] = []
    for i, label in enumerate(others):
        xs, ys = curves[label]
        with np.errstate(all="ignore"), _quiet():
            mean = np.nanmean(np.vstack(ys), axis=0)
        rate = _fmt_rate(float(label.split("lr")[1]))
        ax.plot(xs, mean, color=str(shades[i]), lw=1, ls="--", label=f"{g} {rate} (mean)")
        all_values += [v for v in mean if math.isfinite(v)]
    banded = [m for m in info.methods if m != grid]
    for method in [*([grid] if best_label else []), *banded]:
        label = best_label if method == grid else method
        if label not in curves:
            continue
        xs, ys = curves[label]
        stack = np.vstack(ys)
        with np.errstate(all="ignore"), _quiet():
            mean, low, high = np.nanmean(stack, 0), np.nanmin(stack, 0), np.nanmax(stack, 0)
        name = f"{g} {_fmt_rate(best_rate or 0.0)} (selected)" if method == grid else LABELS.get(method, method)
        color = _COLORS.get(method, "black")
        ax.plot(xs, mean, color=color, lw=2.2 if method == "alrao" else 1.8, marker="o", ms=3, label=name)
        ax.fill_between(xs, low, high, color=color, alpha=0.15, lw=0)
        all_values += [v for v in np.concatenate([low, high]) if math.isfinite(v)]
    ax.axhline(metric.floor, color="black", ls=":", lw=1, label=f"floor: {metric.floor_label}")
    if metric.name == "loss" and all_values:  # diverged rates would squash every other curve
        ax.set_ylim(min(all_values) * 0.95, min(max(all_values), 2 * metric.floor) * 1.05)
    x_label = "environment steps" if metric.name == "return" else "epoch"
    y_label = "return on the selection episodes" if metric.name == "return" else f"validation loss ({metric.unit})"
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.set_title(_title(info, "learning curves, mean over seeds, band = min to max"))
    ax.grid(alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.savefig(path)


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence numpy's warnings about all-NaN slices (missing points are gaps in the plot)."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        yield


def _plot_rates(
    path: str,
    results: Sequence[RunResult],
    rows: Sequence[MethodSummary],
    metric: Metric,
    info: SweepInfo,
    best_rate: float | None,
) -> None:
    """Left: every rate of the grid method (SGD; SAC/TD3: the critics' Adam); right: the same, zoomed on the best
    rate and the other methods' bands."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 5.8), dpi=120, layout="constrained")
    full, zoom = fig.subplots(1, 2, gridspec_kw={"width_ratios": [3, 2]})
    for ax in (full, zoom):
        _draw_rates(ax, results, rows, metric, info, best_rate)
    full.set_title("every rate of the grid")
    if metric.name == "loss":
        finite = [r.test for r in results if math.isfinite(r.test)]
        if finite:
            full.set_ylim(min(finite) * 0.95, min(max(finite), 2 * metric.floor) * 1.05)
    near = [v for row in rows if row.runs for v in (row.mean - row.std, row.mean + row.std)]
    grid = grid_method(info.task)
    near += [r.test for r in results if r.method == grid and r.lr == best_rate and math.isfinite(r.test)]
    near = [v for v in near if math.isfinite(v)]
    if near:
        low, high = min(near), max(near)
        margin = 0.15 * (high - low) or 0.05 * abs(high) or 1.0
        zoom.set_ylim(low - margin, high + margin)
    zoom.set_title("zoom on the best rate and the other methods")
    zoom.set_ylabel("")
    fig.suptitle(_title(info, f"final test {metric.name} against the {GRID_NAMES[grid]} learning rate"))
    fig.legend(*full.get_legend_handles_labels(), loc="outside lower center", ncol=3, fontsize=8, frameon=False)
    fig.savefig(path)


def _draw_rates(
    ax: Any,
    results: Sequence[RunResult],
    rows: Sequence[MethodSummary],
    metric: Metric,
    info: SweepInfo,
    best_rate: float | None,
) -> None:
    grid = grid_method(info.task)
    g = GRID_NAMES[grid]
    sgd = sorted((r for r in results if r.method == grid and r.lr is not None), key=lambda r: r.lr or 0.0)
    rates = sorted({r.lr for r in sgd if r.lr is not None})
    ok = [(r.lr, r.test) for r in sgd if not failure_reason(r, metric)]
    bad = [(r.lr, metric.or_floor(r.test)) for r in sgd if failure_reason(r, metric)]
    if ok:
        ax.scatter(*zip(*ok, strict=True), s=14, color="tab:green", alpha=0.5, label=f"{g}: one seed", zorder=3)
    if bad:
        ax.scatter(*zip(*bad, strict=True), s=30, marker="x", color="black", zorder=3,
                   label=f"{g}: failed seed (a non-finite value is drawn at the floor)")
    if rates:
        means = [float(np.mean([metric.or_floor(r.test) for r in sgd if r.lr == rate])) for rate in rates]
        ax.plot(rates, means, color="tab:green", marker="o", lw=1.8, label=f"{g}: mean over seeds", zorder=4)
        if best_rate is not None:
            y = means[rates.index(best_rate)]
            ax.scatter([best_rate], [y], s=180, marker="*", color="gold", edgecolor="black", zorder=5,
                       label=f"selected rate {_fmt_rate(best_rate)} (on selection data)")
    for row in rows:
        if row.method == grid or not row.runs:
            continue
        color = _COLORS.get(row.method, "black")
        name = row.label + (" (default)" if row.method == "adam" else "")
        if row.method == "alrao":
            name += f", rates in [{_fmt_rate(info.eta_min)}, {_fmt_rate(info.eta_max)}]"
        ax.axhline(row.mean, color=color, lw=1.8, label=f"{name}: mean ± std")
        ax.axhspan(row.mean - row.std, row.mean + row.std, color=color, alpha=0.12, lw=0)
    ax.axhline(metric.floor, color="black", ls=":", lw=1, label=f"floor: {metric.floor_label}")
    ax.set_xscale("log")
    if rates:
        ax.set_xticks(rates, [_fmt_rate(x) for x in rates])
        ax.minorticks_off()
        ax.set_xlim(min(rates) / 2, max(rates) * 2)
    ax.set_xlabel(f"{g} learning rate (log scale)")
    ax.set_ylabel(f"final test {metric.name}" + (f" ({metric.unit})" if metric.unit else ""))
    ax.grid(alpha=0.3)


def _read_posterior(logdir: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps and ``[heads, steps]`` posterior from the TensorBoard scalars ``alrao/posterior/head_{j}`` (SAC/TD3:
    the first critic's, ``alrao/critic_0/posterior/head_{j}``)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not os.path.isdir(logdir):
        return None
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    scalars = acc.Tags().get("scalars", [])
    prefix = next((p for p in ("alrao/posterior/head_", "alrao/critic_0/posterior/head_")
                   if any(t.startswith(p) for t in scalars)), "")
    tags = sorted((t for t in scalars if prefix and t.startswith(prefix)), key=lambda t: int(t[len(prefix):]))
    if not tags:
        return None
    series = [{e.step: e.value for e in acc.Scalars(t)} for t in tags]
    steps = np.array(sorted(set(series[0]).intersection(*series[1:])))
    if steps.size == 0:
        return None
    return steps, np.array([[s[step] for step in steps] for s in series])


def _plot_posterior(path: str, out: str, results: Sequence[RunResult], info: SweepInfo) -> None:
    from matplotlib import colormaps
    from matplotlib.figure import Figure

    from alrao_rl.rates import log_spaced

    runs = sorted((r for r in results if r.method == "alrao"), key=lambda r: r.seed)[:6]
    n = max(len(runs), 1)
    fig = Figure(figsize=(min(4.2 * n, 18) + 1.8, 3.8), dpi=120, layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, n, sharey=True, squeeze=False)[0])
    rates = log_spaced(info.heads, info.eta_min, info.eta_max).tolist()
    colors = colormaps["viridis"](np.linspace(0, 1, info.heads))
    handles = None
    for ax, r in zip(axes, runs, strict=False):
        data = _read_posterior(os.path.join(out, r.logdir)) if r.logdir else None
        ax.set_title(f"seed {r.seed}")
        if data is None:
            ax.text(0.5, 0.5, "no posterior logged", ha="center", va="center", transform=ax.transAxes)
            continue
        steps, posterior = data
        labels = [f"head {j}: η = {rates[j]:.2g}" if j < len(rates) else f"head {j}" for j in range(len(posterior))]
        handles = ax.stackplot(steps, posterior, colors=colors[: len(posterior)], labels=labels, lw=0)
        ax.set_xlim(steps[0], steps[-1])
        ax.set_xlabel("environment steps" if info.task == "rl" else "training steps")
    if not runs:
        axes[0].text(0.5, 0.5, "no Alrao run", ha="center", va="center", transform=axes[0].transAxes)
    axes[0].set_ylim(0, 1)
    axes[0].set_ylabel("switch posterior")
    if handles is not None:
        fig.legend(handles=list(reversed(handles)), loc="outside right center", fontsize=8, frameon=False,
                   title="head (rate)", title_fontsize=8)
    fig.suptitle(_title(info, "Alrao's switch posterior over its heads"))
    fig.savefig(path)
