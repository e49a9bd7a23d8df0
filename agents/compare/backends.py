"""Where the runs of a sweep execute. A backend runs ``run_fn(spec, out)`` for every spec it is given
and yields each result as its run finishes; :func:`agents.compare.sweep.run_sweep` picks one by name in
:data:`BACKENDS`:

* ``"population"`` (:func:`population_backend`, the default): the RL runs of Alrao, SGD and Adam that
  share a configuration but for seed, method and rate are trained as populations
  (:mod:`agents.population`: each member is its single run, bit for bit, at a fraction of the cost),
  split into one population per worker process; every other run goes alone, as with ``"process"``;
* ``"process"`` (:func:`process_backend`): every run alone, in a pool of spawned processes on this machine,
  one torch thread each (one worker: the runs go one after the other in this process);
* ``"ray"`` (:func:`ray_backend`): the units of ``"population"`` as Ray tasks, one CPU each, on a local
  instance or an existing cluster.

A new backend is a function with the signature of :class:`Backend`, added to :data:`BACKENDS`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Any, Protocol

from .plan import RunSpec, dqn_config
from .runs import RunResult, _one_line, execute_population, population_member

RunFn = Callable[[RunSpec, str], RunResult]
"""What runs one spec in the sweep's output folder (module-level, so that it pickles)."""


class Backend(Protocol):
    """Runs ``run_fn(specs[i], out)`` for every ``i`` and yields ``(i, result)`` as the runs finish, each
    ``i`` once.

    :param run_fn: what runs one spec.
    :param specs: the runs to do, in the order to start them.
    :param out: the sweep's output folder.
    :param workers: parallel runs.
    :param ray_address: address of an existing Ray cluster (read by the Ray backend only).
    """

    def __call__(
        self, run_fn: RunFn, specs: Sequence[RunSpec], out: str, *, workers: int, ray_address: str | None
    ) -> Generator[tuple[int, RunResult], None, None]: ...


def _worker_init() -> None:
    """One torch thread per worker: the sweep's parallelism is across runs."""
    import torch

    torch.set_num_threads(1)


def work_units(specs: Sequence[RunSpec], workers: int) -> list[list[int]]:
    """The sweep's units of work, as lists of indices into ``specs``: the runs that can be population
    members (:func:`~agents.compare.runs.population_member`) grouped by what they share (everything
    but seed, method and rate), each group split into ``workers`` populations of similar cost (the
    methods dealt round-robin); every other run alone."""
    from agents.population import member_key

    units: list[list[int]] = []
    groups: dict[tuple, list[int]] = {}
    for i, spec in enumerate(specs):
        if population_member(spec):
            groups.setdefault(member_key(dqn_config(spec)), []).append(i)
        else:
            units.append([i])
    for members in groups.values():
        members.sort(key=lambda i: (specs[i].method, specs[i].lr or 0.0, specs[i].seed))
        chunks = min(workers, len(members))
        units.extend(c for c in (members[k::chunks] for k in range(chunks)) if c)
    return units


def _run_unit(run_fn: RunFn, unit: Sequence[RunSpec], out: str) -> list[RunResult]:
    """A unit of :func:`work_units`: a population, or one run alone (by ``run_fn``)."""
    if len(unit) == 1 and not population_member(unit[0]):
        return [run_fn(unit[0], out)]
    return execute_population(unit, out)


def _ray_unit(run_fn: RunFn, unit: Sequence[RunSpec], out: str) -> list[RunResult]:
    _worker_init()
    return _run_unit(run_fn, unit, out)


def _pool(
    task: Callable[..., Any], jobs: Sequence[tuple[Any, ...]], workers: int
) -> Generator[tuple[int, Any], None, None]:
    """``(i, task(*jobs[i]))`` as they finish in a pool of ``workers`` spawned processes (one torch thread
    each); with one worker, one after the other in this process."""
    if workers == 1 or len(jobs) == 1:
        _worker_init()
        for i, job in enumerate(jobs):
            yield i, task(*job)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process that ran torch threads
    with ProcessPoolExecutor(min(workers, len(jobs)), mp_context=context, initializer=_worker_init) as pool:
        pending: dict[Future[Any], int] = {pool.submit(task, *job): i for i, job in enumerate(jobs)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    yield pending.pop(future), future.result()
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def process_backend(
    run_fn: RunFn, specs: Sequence[RunSpec], out: str, *, workers: int, ray_address: str | None
) -> Generator[tuple[int, RunResult], None, None]:
    """``(i, run_fn(specs[i], out))`` as the runs finish in a pool of ``workers`` spawned processes (one
    torch thread each); with one worker, one after the other in this process (``ray_address`` is not read)."""
    yield from _pool(run_fn, [(spec, out) for spec in specs], workers)


def population_backend(
    run_fn: RunFn, specs: Sequence[RunSpec], out: str, *, workers: int, ray_address: str | None
) -> Generator[tuple[int, RunResult], None, None]:
    """The units of :func:`work_units` in a pool of ``workers`` processes: ``(i, result of specs[i])`` for
    every run of a unit when the unit finishes (``ray_address`` is not read)."""
    units = work_units(specs, workers)
    jobs = [(run_fn, [specs[i] for i in unit], out) for unit in units]
    for u, results in _pool(_run_unit, jobs, workers):
        yield from zip(units[u], results, strict=True)


def ray_backend(
    run_fn: RunFn, specs: Sequence[RunSpec], out: str, *, workers: int, ray_address: str | None
) -> Generator[tuple[int, RunResult], None, None]:
    """The units of :func:`work_units` as Ray tasks (one CPU each), on the cluster at ``ray_address`` or
    on a local instance of ``workers`` CPUs: ``(i, result of specs[i])`` as the units finish (``out``
    must be on a file system every Ray node sees)."""
    import ray

    started = not ray.is_initialized()
    if started:
        if ray_address:
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        cpus = int(ray.cluster_resources().get("CPU", workers))
        units = work_units(specs, max(cpus, 1))
        task = ray.remote(num_cpus=1)(_ray_unit)
        out = os.path.abspath(out)
        refs = {task.remote(run_fn, [specs[i] for i in unit], out): u for u, unit in enumerate(units)}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            u = refs.pop(done[0])
            try:
                results = ray.get(done[0])
            except ray.exceptions.RayError as e:
                results = [RunResult(specs[i].method, specs[i].lr, specs[i].seed, math.nan, math.nan,
                                     error=_one_line(f"ray: {e}")) for i in units[u]]
            yield from zip(units[u], results, strict=True)
    finally:
        if started:
            ray.shutdown()


BACKENDS: dict[str, Backend] = {"population": population_backend, "process": process_backend, "ray": ray_backend}
"""The backends, by the name ``run_sweep(backend=...)`` and ``scripts/compare.py --backend`` take."""
