"""Running a sweep: every run that has no finished result on disk, the longest first, on a backend of
:mod:`agents.compare.backends`; and the record of the invocations that trained runs
(``out/runs/sweeps.jsonl``)."""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .backends import BACKENDS, RunFn
from .plan import RunSpec
from .runs import RunResult, execute_run, load_finished


@dataclass
class SweepOutcome:
    """Results of a sweep, in the order of its specifications.

    :param results: one per spec.
    :param ran: how many runs were trained by this call.
    :param reused: how many finished runs were found on disk and not run again.
    """

    results: list[RunResult]
    ran: int
    reused: int


def usable_cores() -> int:
    """The cores this process may run on (its affinity where the OS tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _cost(spec: RunSpec) -> int:
    """Rough relative cost, to start the longest runs first (Alrao's heads and AdaQN's networks make their runs
    slower)."""
    return 4 if spec.method in ("alrao", "adaqn") else 1


def run_sweep(
    specs: Sequence[RunSpec],
    out: str,
    *,
    backend: str = "population",
    workers: int | None = None,
    force: bool = False,
    ray_address: str | None = None,
    progress: bool = True,
    run_fn: RunFn = execute_run,
) -> SweepOutcome:
    """Run every spec that has no finished result in ``out`` (all of them with ``force``).

    :param specs: the runs (:func:`plan_runs`).
    :param out: output folder.
    :param backend: a name in :data:`~agents.compare.backends.BACKENDS`: ``"population"`` (RL runs of
        Alrao, SGD and Adam as populations in a process pool), ``"process"`` (every run alone in a process
        pool on this machine; one worker runs in this process) or ``"ray"`` (the population units as Ray
        tasks; ``out`` must then be on a file system every Ray node sees).
    :param workers: parallel runs (default: the usable cores; for Ray, the CPUs of a local instance).
    :param force: rerun finished runs.
    :param ray_address: address of an existing Ray cluster (default: start a local instance).
    :param progress: show a progress bar over runs.
    :param run_fn: what runs one spec (module-level, so that it pickles).
    """
    from tqdm import tqdm

    if backend not in BACKENDS:
        raise ValueError(f"backend must be {' or '.join(map(repr, BACKENDS))}, got {backend!r}")
    workers = workers or usable_cores()
    results: list[RunResult | None] = [None if force else load_finished(out, spec) for spec in specs]
    todo = sorted((i for i, r in enumerate(results) if r is None), key=lambda i: -_cost(specs[i]))
    os.makedirs(out, exist_ok=True)
    bar = tqdm(total=len(todo), disable=not progress or not todo, unit="run", desc="runs", dynamic_ncols=True)
    try:
        if todo:
            finished = BACKENDS[backend](run_fn, [specs[i] for i in todo], out, workers=workers,
                                         ray_address=ray_address)
            with contextlib.closing(finished):  # an error in this loop (Ctrl-C) stops the backend's workers
                for j, result in finished:
                    results[todo[j]] = result
                    bar.update(1)
    finally:
        bar.close()
    return SweepOutcome([r for r in results if r is not None], ran=len(todo), reused=len(specs) - len(todo))


# --- the invocations that trained runs -------------------------------------------------------------


HISTORY = "sweeps.jsonl"
"""File in ``out/runs`` with one JSON line per invocation that trained runs."""


def record_sweep(out: str, wall_seconds: float, ran: int, workers: int, backend: str) -> None:
    """Append one invocation's wall time to ``out/runs/sweeps.jsonl`` (nothing when it trained no run).

    :param out: the sweep's output folder.
    :param wall_seconds: the invocation's wall time.
    :param ran: runs it trained.
    :param workers: parallel runs.
    :param backend: ``"process"`` or ``"ray"``.
    """
    if ran < 1:
        return
    os.makedirs(os.path.join(out, "runs"), exist_ok=True)
    entry = {"finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "wall_seconds": round(wall_seconds, 1), "ran": ran,
             "workers": workers, "backend": backend}
    with open(os.path.join(out, "runs", HISTORY), "a") as f:
        f.write(json.dumps(entry) + "\n")


def sweep_history(out: str) -> list[dict[str, Any]]:
    """The entries of ``out/runs/sweeps.jsonl`` (unreadable lines are skipped)."""
    entries = []
    with contextlib.suppress(OSError), open(os.path.join(out, "runs", HISTORY)) as f:
        for line in f:
            with contextlib.suppress(ValueError):
                entries.append(json.loads(line))
    return [e for e in entries if isinstance(e, dict)]
