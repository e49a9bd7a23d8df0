"""The backends of a sweep: the setup of a worker process, and Ray tasks."""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Iterator, Sequence

from .plan import RunSpec
from .runs import RunResult, _one_line, execute_run


def _worker_init() -> None:
    """One torch thread per worker: the sweep's parallelism is across runs."""
    import torch

    torch.set_num_threads(1)


def _ray_run(spec: RunSpec, out: str) -> RunResult:
    _worker_init()
    return execute_run(spec, out)


def _ray_map(
    run_fn: Callable[[RunSpec, str], RunResult],
    specs: Sequence[RunSpec],
    keys: Sequence[int],
    out: str,
    workers: int,
    address: str | None,
) -> Iterator[tuple[int, RunResult]]:
    """``(key, run_fn(spec, out))`` as Ray tasks finish (one CPU each)."""
    import ray

    started = not ray.is_initialized()
    if started:
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1)(_ray_run if run_fn is execute_run else run_fn)
        out = os.path.abspath(out)
        refs = {task.remote(spec, out): key for spec, key in zip(specs, keys, strict=True)}
        while refs:
            done, _ = ray.wait(list(refs), num_returns=1)
            key = refs.pop(done[0])
            try:
                result = ray.get(done[0])
            except ray.exceptions.RayError as e:
                spec = specs[list(keys).index(key)]
                result = RunResult(spec.method, spec.lr, spec.seed, math.nan, math.nan, error=_one_line(f"ray: {e}"))
            yield key, result
    finally:
        if started:
            ray.shutdown()
