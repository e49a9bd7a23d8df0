"""Every output of a sweep in one call: ``results.csv``, ``report.md`` and the three figures."""

from __future__ import annotations

import os
from collections.abc import Sequence

from .plots import _plot_curves, _plot_posterior, _plot_rates, _read_curves
from .report import SweepInfo, _report_text, _table_order, write_results_csv
from .runs import RunResult
from .stats import Metric, summarize


def write_report(
    out: str, results: Sequence[RunResult], metric: Metric, info: SweepInfo, resamples: int = 10_000
) -> dict[str, str]:
    """Write ``results.csv``, ``report.md`` and the three figures into ``out``.

    :param out: the sweep's output folder (run folders under ``out/runs``).
    :param results: every run's result.
    :param metric: the scoring.
    :param info: what the sweep was.
    :param resamples: bootstrap resamples.
    :return: the paths written, by name (``results``, ``report``, ``curves``, ``rates``, ``posterior``).
    """
    rows, best_rate, selection_means = summarize(results, metric, _table_order(info.methods), resamples)
    paths = {
        "results": os.path.join(out, "results.csv"),
        "report": os.path.join(out, "report.md"),
        "curves": os.path.join(out, "curves.png"),
        "rates": os.path.join(out, "rates.png"),
        "posterior": os.path.join(out, "posterior.png"),
    }
    write_results_csv(paths["results"], results, metric)
    curves = _read_curves(out, results, metric)
    _plot_curves(paths["curves"], curves, metric, info, best_rate)
    _plot_rates(paths["rates"], results, rows, metric, info, best_rate)
    _plot_posterior(paths["posterior"], out, results, info)
    text = _report_text(results, rows, best_rate, selection_means, metric, info, resamples)
    with open(paths["report"], "w") as f:
        f.write(text)
    return paths
