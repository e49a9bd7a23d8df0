"""Where the runs of a sweep execute. A backend runs ``run_fn(spec, out)`` for every spec it is given
and yields each result as its run finishes; :func:`agents.compare.sweep.run_sweep` picks one by name in
:data:`BACKENDS`:

* ``"process"`` (:func:`process_backend`): a pool of spawned processes on this machine, one torch thread
  each (one worker: the runs go one after the other in this process);
* ``"ray"`` (:func:`ray_backend`): Ray tasks, one CPU each, on a local instance or an existing cluster.

A new backend is a function with the signature of :class:`Backend`, added to :data:`BACKENDS`.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Generator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from typing import Protocol

from .plan import RunSpec
from .runs import RunResult, _one_line, execute_run

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


def _ray_run(spec: RunSpec, out: str) -> RunResult:
    _worker_init()
    return execute_run(spec, out)


def process_backend(
    run_fn: RunFn, specs: Sequence[RunSpec], out: str, *, workers: int, ray_address: str | None
) -> Generator[tuple[int, RunResult], None, None]:
    """``(i, run_fn(specs[i], out))`` as the runs finish in a pool of ``workers`` spawned processes (one
    torch thread each); with one worker, one after the other in this process (``ray_address`` is not read)."""
    if workers == 1:
        _worker_init()
        for i, spec in enumerate(specs):
            yield i, run_fn(spec, out)
        return
    import multiprocessing

    context = multiprocessing.get_context("spawn")  # no fork of a process that ran torch threads
    with ProcessPoolExecutor(min(workers, len(specs)), mp_context=context, initializer=_worker_init) as pool:
        pending: dict[Future[RunResult], int] = {pool.submit(run_fn, spec, out): i for i, spec in enumerate(specs)}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    result = future.result()
                    yield pending.pop(future), result
        except BaseException:
            pool.shutdown(wait=True, cancel_futures=True)
            raise


def ray_backend(
    run_fn: RunFn, specs: Sequence[RunSpec], out: str, *, workers: int, ray_address: str | None
) -> Generator[tuple[int, RunResult], None, None]:
    """``(i, run_fn(specs[i], out))`` as Ray tasks finish (one CPU each), on the cluster at ``ray_address``
    or on a local instance of ``workers`` CPUs (``out`` must be on a file system every Ray node sees)."""
    import ray

    started = not ray.is_initialized()
    if started:
        if ray_address:
            ray.init(address=ray_address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(_ray_run if run_fn is execute_run else run_fn)
        out = os.path.abspath(out)
        refs = {task.remote(spec, out): i for i, spec in enumerate(specs)}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            i = refs.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as e:
                spec = specs[i]
                result = RunResult(spec.method, spec.lr, spec.seed, math.nan, math.nan, error=_one_line(f"ray: {e}"))
            yield i, result
    finally:
        if started:
            ray.shutdown()


BACKENDS: dict[str, Backend] = {"process": process_backend, "ray": ray_backend}
"""The backends, by the name ``run_sweep(backend=...)`` and ``scripts/compare.py --backend`` take."""
