"""Alrao against SGD at every rate of a grid, default Adam and tuning-free peers: the protocol of the
paper's Table 1 (Section 5), made explicit, for DQN (``task="rl"``) and the supervised tasks.

**Runs.** For every seed: Alrao (rates in ``[eta_min, eta_max]``), SGD at every rate of the grid
(default ``{1e-5, ..., 10}``), Adam with its defaults, and optionally tuning-free optimizers with
their defaults (:data:`PEERS`: Prodigy, D-Adaptation SGD/Adam, DoG, schedule-free SGD/AdamW). Each
run is the project's own training function (:func:`agents.dqn.train`,
:func:`alrao_rl.supervised.train.train_classifier`) with its usual outputs in
``out/runs/<method>[-lr<rate>]/seed<k>/``, plus ``compare.json`` (the run's specification, its hash
and its result) that makes a sweep resumable.

**Selection, then a fresh test.** SGD's rate is chosen on *selection* data only, then every method
is reported on *test* data that played no part in any choice:

* RL: selection = the final evaluation of :func:`agents.dqn.train` (greedy episodes seeded
  ``1_000_000 + 1000 seed + k``); the rate with the best mean over seeds of that return is chosen.
  Test = the final policy (``checkpoint.pt``) on new greedy episodes seeded
  ``2_000_000 + 1000 seed + k``.
* Supervised: selection = the validation loss of the run's best-validation epoch; test = the test
  loss and accuracy of that epoch (what ``train_classifier`` reports).

**Failed runs** are kept and counted, never dropped: a run fails when a selection or test value is
not finite (divergence, or an error during the run) or when its test value is worse than the
*floor* of its task: the mean return of a uniformly random policy (measured on a few episodes per
env, :func:`random_policy_returns`) or the loss of the uniform prediction (``ln 10`` nats on
CIFAR-10, ``log2(vocabulary)`` bits on PTB). A value that is not finite enters the means, IQMs and
the selection as the floor (a diverged run is scored like a random policy), so that a diverging
rate cannot look good by losing its worst seeds.

**Aggregates.** Per method: mean +/- standard deviation over seeds of the test value, the
interquartile mean (IQM: the mean of the middle half of the sorted values, after dropping
``floor(n/4)`` at each end; Agarwal et al. 2021) with a 95% percentile-bootstrap confidence interval
(10,000 resamples of the runs, seeded :class:`numpy.random.Generator`), and the number of failed
runs.
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import importlib
import importlib.util
import json
import math
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np

__all__ = [
    "BASE_METHODS",
    "DEFAULT_SGD_GRID",
    "PEERS",
    "TASKS",
    "MethodSummary",
    "Metric",
    "Peer",
    "RunResult",
    "RunSpec",
    "SweepInfo",
    "SweepOutcome",
    "bootstrap_ci",
    "check_methods",
    "dqn_config",
    "execute_run",
    "failure_reason",
    "iqm",
    "load_finished",
    "load_supervised_data",
    "plan_runs",
    "random_policy_returns",
    "record_sweep",
    "run_dir",
    "run_sweep",
    "select_sgd_rate",
    "summarize",
    "sweep_history",
    "test_seeds",
    "train_config",
    "uniform_loss",
    "usable_cores",
    "write_report",
    "write_results_csv",
]

TASKS: tuple[str, ...] = ("rl", "cifar", "ptb")
"""``rl``: DQN on a gymnasium env; ``cifar``, ``ptb``: the supervised tasks of the paper."""
BASE_METHODS: tuple[str, ...] = ("alrao", "sgd", "adam")
"""Methods the training functions know; peers replace the optimizer of a plain network."""
DEFAULT_SGD_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""The paper's grid of SGD rates (Section 5)."""
TEST_SEED_BASE = 2_000_000
"""Test episodes are seeded ``TEST_SEED_BASE + 1000 seed + k``; the selection episodes of
:func:`agents.dqn.train` use ``1_000_000 + 1000 seed + k``."""
RANDOM_SEED_BASE = 3_000_000
"""Episodes of the random policy that measures the failure floor are seeded ``RANDOM_SEED_BASE + k``."""
MAX_EPISODES = 1000
"""At most this many selection or test episodes, so that the two seed ranges never overlap."""
PROTOCOL_VERSION = 2
"""Part of every run's hash: bump it when the meaning of a stored result changes."""


# --- methods ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Peer:
    """A tuning-free optimizer from an optional package, used with its defaults.

    :param name: method name on the command line.
    :param label: name in tables and plots.
    :param package: the pip package.
    :param module: the module to import.
    :param attr: the optimizer class in ``module``.
    """

    name: str
    label: str
    package: str
    module: str
    attr: str

    extra: str = "peers"
    """The optional extra of alrao-rl that installs it (``pip install 'alrao-rl[peers]'``)."""

    def available(self) -> bool:
        """Whether the package can be imported."""
        return importlib.util.find_spec(self.module) is not None

    def make(self, params: Iterable[Any]) -> Any:
        """The optimizer on ``params`` with its defaults; schedule-free ones are put in training mode."""
        optimizer = getattr(importlib.import_module(self.module), self.attr)(params)
        if callable(getattr(optimizer, "train", None)):
            optimizer.train()
        return optimizer


PEERS: dict[str, Peer] = {
    p.name: p
    for p in (
        Peer("prodigy", "Prodigy", "prodigyopt", "prodigyopt", "Prodigy"),
        Peer("dadapt-sgd", "D-Adaptation SGD", "dadaptation", "dadaptation", "DAdaptSGD"),
        Peer("dadapt-adam", "D-Adaptation Adam", "dadaptation", "dadaptation", "DAdaptAdam"),
        Peer("dog", "DoG", "dog-optimizer", "dog", "DoG"),
        Peer("sf-sgd", "Schedule-free SGD", "schedulefree", "schedulefree", "SGDScheduleFree"),
        Peer("sf-adamw", "Schedule-free AdamW", "schedulefree", "schedulefree", "AdamWScheduleFree"),
    )
}
"""Tuning-free peers, by method name."""

LABELS: dict[str, str] = {"alrao": "Alrao", "sgd": "SGD", "adam": "Adam", **{k: p.label for k, p in PEERS.items()}}


def check_methods(methods: Sequence[str]) -> None:
    """Refuse unknown methods, duplicates, and peers whose package is not installed.

    :param methods: method names (:data:`BASE_METHODS` and :data:`PEERS` keys).
    :raises ValueError: one line naming the method, and for a missing package the extra to install.
    """
    known = (*BASE_METHODS, *PEERS)
    if not methods:
        raise ValueError("no method given")
    for method in methods:
        if method not in known:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(known)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"a method is given twice: {', '.join(methods)}")
    for method in methods:
        peer = PEERS.get(method)
        if peer is not None and not peer.available():
            raise ValueError(
                f"method {method!r} needs the package {peer.package!r}, which is not installed: "
                f"pip install 'alrao-rl[{peer.extra}]' (the optional extra '{peer.extra}')"
            )


# --- what one run is -------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunSpec:
    """One run of the sweep; its hash identifies a finished run on disk.

    :param task: ``"rl"``, ``"cifar"`` or ``"ptb"``.
    :param problem: the env id (RL) or the data set name (``"cifar10"``, ``"ptb-char"``).
    :param method: a base method or a peer.
    :param lr: SGD's rate (None for every other method: they run with their defaults).
    :param seed: the run's seed.
    :param options: overrides of the training configuration (:class:`agents.dqn.DQNConfig` or
        :class:`alrao_rl.supervised.train.TrainConfig` fields), as sorted ``(name, value)`` pairs.
    :param test_episodes: RL: greedy test episodes of the final policy.
    :param data_dir: supervised: the data folder.
    """

    task: str
    problem: str
    method: str
    lr: float | None
    seed: int
    options: tuple[tuple[str, Any], ...] = ()
    test_episodes: int = 10
    data_dir: str | None = None

    @property
    def label(self) -> str:
        """``<method>`` or ``sgd-lr<rate>``: the run folder's name."""
        return self.method if self.lr is None else f"{self.method}-lr{self.lr:g}"

    def config_hash(self) -> str:
        """SHA-256 (16 hex digits) of the specification and :data:`PROTOCOL_VERSION`."""
        state = {**asdict(self), "protocol": PROTOCOL_VERSION}
        state["data_dir"] = os.path.abspath(self.data_dir) if self.data_dir else None
        text = json.dumps(state, sort_keys=True, default=repr)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


def plan_runs(
    task: str,
    problem: str,
    methods: Sequence[str],
    seeds: Sequence[int],
    sgd_grid: Sequence[float] = DEFAULT_SGD_GRID,
    options: dict[str, Any] | None = None,
    test_episodes: int = 10,
    data_dir: str | None = None,
) -> list[RunSpec]:
    """Every run of the sweep: for each seed, each method (SGD once per rate of the grid).

    :param task: one of :data:`TASKS`.
    :param problem: env id or data set name.
    :param methods: methods to run (checked by :func:`check_methods`).
    :param seeds: the seeds.
    :param sgd_grid: SGD's rates.
    :param options: training-configuration overrides shared by every run.
    :param test_episodes: RL: test episodes per run.
    :param data_dir: supervised: the data folder.
    :raises ValueError: for an unknown task, no seed, or a rate that is not a finite number > 0.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if not seeds:
        raise ValueError("at least one seed is needed")
    for rate in sgd_grid:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"SGD rates must be finite numbers > 0, got {rate}")
    if "sgd" in methods and not sgd_grid:
        raise ValueError("method 'sgd' needs at least one rate in the SGD grid")
    if not 1 <= test_episodes <= MAX_EPISODES:
        raise ValueError(f"test episodes must lie in 1..{MAX_EPISODES}, got {test_episodes}")
    shared = tuple(sorted((options or {}).items()))
    specs = []
    for seed in seeds:
        for method in methods:
            rates: Sequence[float | None] = sorted(set(sgd_grid)) if method == "sgd" else [None]
            for rate in rates:
                specs.append(RunSpec(task, problem, method, rate, int(seed), shared, test_episodes, data_dir))
    return specs


def run_dir(out: str | os.PathLike[str], spec: RunSpec) -> str:
    """``out/runs/<label>/seed<k>``: where a run writes its outputs."""
    return os.path.join(os.fspath(out), "runs", spec.label, f"seed{spec.seed}")


def test_seeds(seed: int, episodes: int) -> list[int]:
    """Seeds of the test episodes of run ``seed``: ``2_000_000 + 1000 seed + k``, ``k < episodes``."""
    return [TEST_SEED_BASE + 1000 * seed + k for k in range(episodes)]


@dataclass
class RunResult:
    """What one run produced (raw values; failures are judged later against the floor).

    :param method: the method.
    :param lr: SGD's rate (None otherwise).
    :param seed: the seed.
    :param selection: RL: final return on the selection episodes; supervised: validation loss of the
        best-validation epoch. NaN when missing or not finite.
    :param test: RL: mean return of the final policy on the test episodes; supervised: test loss.
    :param test_std: RL: standard deviation of the test-episode returns.
    :param test_accuracy: supervised: test accuracy.
    :param wall_seconds: training time of the run.
    :param logdir: the run folder, relative to the sweep's output folder.
    :param error: why the run produced no result (an exception, an interruption); empty otherwise.
    :param outputs_finite: RL: the final network's Q-values on the test episodes' first observations
        are finite.
    :param distinct_actions: RL: how many different actions the final greedy policy took in the test
        episodes (1: a degenerate, constant policy).
    """

    method: str
    lr: float | None
    seed: int
    selection: float
    test: float
    test_std: float = math.nan
    test_accuracy: float = math.nan
    wall_seconds: float = math.nan
    logdir: str = ""
    error: str = ""
    outputs_finite: bool = True
    distinct_actions: int | None = None

    @property
    def label(self) -> str:
        return self.method if self.lr is None else f"{self.method}-lr{self.lr:g}"

    def to_json(self) -> dict[str, Any]:
        """A JSON-safe dict (NaN as None)."""
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in asdict(self).items()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> RunResult:
        """Inverse of :meth:`to_json`."""
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in names}
        for key in ("selection", "test", "test_std", "test_accuracy", "wall_seconds"):
            values[key] = math.nan if values.get(key) is None else float(values[key])
        return cls(**values)


# --- running one run (in a worker process) -------------------------------------------------------------


def _finite(value: Any) -> float:
    """``float(value)``, or NaN for None and non-numbers."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _atomic_json(path: str, data: dict[str, Any]) -> None:
    directory, name = os.path.split(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2, allow_nan=False)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def dqn_config(spec: RunSpec) -> Any:
    """The :class:`agents.dqn.DQNConfig` of an RL run (peers: a plain network, method ``"adam"``,
    whose optimizer is replaced)."""
    from agents.dqn import DQNConfig

    method = spec.method if spec.method in BASE_METHODS else "adam"
    return DQNConfig(env=spec.problem, method=method, lr=spec.lr, seed=spec.seed, **dict(spec.options))


def train_config(spec: RunSpec) -> Any:
    """The :class:`alrao_rl.supervised.train.TrainConfig` of a supervised run."""
    from alrao_rl.supervised.train import TrainConfig

    method = spec.method if spec.method in BASE_METHODS else "adam"
    return TrainConfig(task=spec.task, method=method, lr=spec.lr, seed=spec.seed, **dict(spec.options))


def _optimizer_factory(method: str) -> Any:
    """The peer's optimizer builder for ``method`` (None for Alrao, SGD and Adam: the runs' own)."""
    peer = PEERS.get(method)
    return None if peer is None else peer.make


def _run_rl(spec: RunSpec, logdir: str) -> RunResult:
    import torch

    from agents import dqn
    from alrao_rl.checkpoint import load_checkpoint
    from envs import make_env

    config = dqn_config(spec)
    factory = _optimizer_factory(spec.method)
    summary = dqn.train(config, logdir, progress=False, optimizer_factory=factory)
    if summary["interrupted"]:
        raise InterruptedError(f"stopped at step {summary['total_steps']}")
    env = make_env(config.env, config.seed, n_bins=config.n_bins)
    try:
        obs_dim, n_actions = int(np.prod(env.observation_space.shape)), int(env.action_space.n)
        agent = dqn.DQNAgent(obs_dim, n_actions, config, factory)
        agent.load_state_dict(load_checkpoint(os.path.join(logdir, "checkpoint.pt"))["agent"])
        if callable(getattr(agent.optimizer, "eval", None)):
            agent.optimizer.eval()  # schedule-free: act with the averaged weights
        seeds = test_seeds(spec.seed, spec.test_episodes)
        counter = _ActionCounter(agent)
        test_mean, test_std = dqn.evaluate(counter, env, seeds)  # type: ignore[arg-type]
        first = np.stack([env.reset(seed=s)[0] for s in seeds]).astype(np.float32)
        outputs_finite = bool(torch.isfinite(agent.q_values(torch.from_numpy(first))).all())
    finally:
        env.close()
    return RunResult(
        spec.method,
        spec.lr,
        spec.seed,
        selection=_finite(summary["final_eval_return_mean"]),
        test=test_mean,
        test_std=test_std,
        wall_seconds=_finite(summary["wall_seconds"]),
        outputs_finite=outputs_finite,
        distinct_actions=len(counter.actions),
    )


class _ActionCounter:
    """Stands for a DQN agent in :func:`agents.dqn.evaluate` and records the greedy actions it takes.

    :param agent: the agent.
    """

    def __init__(self, agent: Any) -> None:
        self.agent = agent
        self.actions: set[int] = set()

    def greedy_action(self, obs: np.ndarray) -> int:
        action = self.agent.greedy_action(obs)
        self.actions.add(action)
        return action


_DATA_CACHE: dict[tuple[Any, ...], Any] = {}


def load_supervised_data(task: str, data_dir: str, options: dict[str, Any]) -> Any:
    """CIFAR-10 (:func:`~alrao_rl.supervised.train.prepare_cifar`) or PTB
    (:func:`~alrao_rl.supervised.ptb.load_ptb_dir`) from ``data_dir``, cached per process.

    :param task: ``"cifar"`` or ``"ptb"``.
    :param data_dir: the data folder.
    :param options: the runs' configuration overrides (``valid_size``, ``limit_train``, ``level``).
    """
    key = (task, os.path.abspath(data_dir), options.get("valid_size"), options.get("limit_train"),
           options.get("level", "char"))
    if key not in _DATA_CACHE:
        from alrao_rl.supervised.train import PtbData, prepare_cifar

        if task == "cifar":
            _DATA_CACHE[key] = prepare_cifar(data_dir, options.get("valid_size"), options.get("limit_train"))
        else:
            from alrao_rl.supervised.ptb import load_ptb_dir

            _DATA_CACHE[key] = PtbData(*load_ptb_dir(data_dir, options.get("level", "char")))
    return _DATA_CACHE[key]


def uniform_loss(task: str, data: Any) -> float:
    """The loss of the uniform prediction: ``ln 10`` nats (CIFAR-10), ``log2 |vocabulary|`` bits (PTB)."""
    return math.log(10.0) if task == "cifar" else math.log2(len(data.vocab))


def _run_supervised(spec: RunSpec, logdir: str) -> RunResult:
    from alrao_rl.supervised.train import train_classifier

    if spec.data_dir is None:
        raise ValueError(f"task {spec.task!r} needs a data folder")
    config = train_config(spec)
    data = load_supervised_data(spec.task, spec.data_dir, dict(spec.options))
    summary = train_classifier(config, data, logdir, progress=False, optimizer_factory=_optimizer_factory(spec.method))
    if summary is None:
        raise InterruptedError("stopped before the end")
    selection = math.nan
    with open(os.path.join(logdir, "evals.csv"), newline="") as f:
        for row in csv.DictReader(f):
            if summary["best_epoch"] is not None and int(row["epoch"]) == summary["best_epoch"]:
                selection = _finite(row["valid_loss"])
    return RunResult(
        spec.method,
        spec.lr,
        spec.seed,
        selection=selection,
        test=_finite(summary["test_loss"]),
        test_accuracy=_finite(summary["test_accuracy"]),
        wall_seconds=_finite(summary["wall_seconds"]),
    )


def execute_run(spec: RunSpec, out: str) -> RunResult:
    """Train one run from scratch in ``run_dir(out, spec)`` (a previous, unfinished run there is
    deleted), test it, and record ``compare.json``.

    An exception inside the run becomes a result with NaN values and ``error`` set (such a run is
    not recorded as finished: the next invocation tries it again).

    :param spec: the run.
    :param out: the sweep's output folder.
    """
    logdir = run_dir(out, spec)
    if os.path.isdir(logdir):
        shutil.rmtree(logdir)
    os.makedirs(logdir)
    try:
        result = _run_rl(spec, logdir) if spec.task == "rl" else _run_supervised(spec, logdir)
    except Exception as e:  # a crash is a failed run to report, not a reason to lose the sweep
        error = _one_line(f"{type(e).__name__}: {e}")
        result = RunResult(spec.method, spec.lr, spec.seed, math.nan, math.nan, error=error)
    result.logdir = os.path.relpath(logdir, out)
    if not result.error:
        record = {"config_hash": spec.config_hash(), "spec": asdict(spec), "result": result.to_json()}
        _atomic_json(os.path.join(logdir, "compare.json"), json.loads(json.dumps(record, default=repr)))
    return result


def load_finished(out: str, spec: RunSpec) -> RunResult | None:
    """The recorded result of ``spec`` when ``run_dir(out, spec)/compare.json`` has its hash, else None."""
    path = os.path.join(run_dir(out, spec), "compare.json")
    try:
        with open(path) as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("config_hash") != spec.config_hash():
        return None
    try:
        return RunResult.from_json(record["result"])
    except (KeyError, TypeError, ValueError):
        return None


def _worker_init() -> None:
    """One torch thread per worker: the sweep's parallelism is across runs."""
    import torch

    torch.set_num_threads(1)


def _ray_run(spec: RunSpec, out: str) -> RunResult:
    _worker_init()
    return execute_run(spec, out)


# --- running the sweep -----------------------------------------------------------------------------


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


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters (errors go into tables)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


def _cost(spec: RunSpec) -> int:
    """Rough relative cost, to start the longest runs first (Alrao's heads make its runs slower)."""
    return 4 if spec.method == "alrao" else 1


def run_sweep(
    specs: Sequence[RunSpec],
    out: str,
    *,
    backend: str = "process",
    workers: int | None = None,
    force: bool = False,
    ray_address: str | None = None,
    progress: bool = True,
    run_fn: Callable[[RunSpec, str], RunResult] = execute_run,
) -> SweepOutcome:
    """Run every spec that has no finished result in ``out`` (all of them with ``force``).

    :param specs: the runs (:func:`plan_runs`).
    :param out: output folder.
    :param backend: ``"process"`` (a process pool on this machine; one worker runs in this process)
        or ``"ray"`` (Ray tasks; ``out`` must then be on a file system every Ray node sees).
    :param workers: parallel runs (default: the usable cores; for Ray, the CPUs of a local instance).
    :param force: rerun finished runs.
    :param ray_address: address of an existing Ray cluster (default: start a local instance).
    :param progress: show a progress bar over runs.
    :param run_fn: what runs one spec (module-level, so that it pickles).
    """
    from tqdm import tqdm

    if backend not in ("process", "ray"):
        raise ValueError(f"backend must be 'process' or 'ray', got {backend!r}")
    workers = workers or usable_cores()
    results: list[RunResult | None] = [None if force else load_finished(out, spec) for spec in specs]
    todo = sorted((i for i, r in enumerate(results) if r is None), key=lambda i: -_cost(specs[i]))
    os.makedirs(out, exist_ok=True)
    bar = tqdm(total=len(todo), disable=not progress or not todo, unit="run", desc="runs", dynamic_ncols=True)
    try:
        if not todo:
            pass
        elif backend == "ray":
            for i, result in _ray_map(run_fn, [specs[i] for i in todo], todo, out, workers, ray_address):
                results[i] = result
                bar.update(1)
        elif workers == 1:
            _worker_init()
            for i in todo:
                results[i] = run_fn(specs[i], out)
                bar.update(1)
        else:
            import multiprocessing

            context = multiprocessing.get_context("spawn")  # no fork of a process that ran torch threads
            with ProcessPoolExecutor(min(workers, len(todo)), mp_context=context, initializer=_worker_init) as pool:
                pending: dict[Future[RunResult], int] = {pool.submit(run_fn, specs[i], out): i for i in todo}
                try:
                    while pending:
                        done, _ = wait(pending, return_when=FIRST_COMPLETED)
                        for future in done:
                            results[pending.pop(future)] = future.result()
                            bar.update(1)
                except BaseException:
                    pool.shutdown(wait=True, cancel_futures=True)
                    raise
    finally:
        bar.close()
    return SweepOutcome([r for r in results if r is not None], ran=len(todo), reused=len(specs) - len(todo))


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


# --- failure floor ---------------------------------------------------------------------------------


def random_policy_returns(env_id: str, episodes: int = 20, n_bins: int = 5) -> list[float]:
    """Returns of a uniformly random policy (episodes seeded ``3_000_000 + k``): the failure floor of
    an env is their mean.

    :param env_id: gymnasium id.
    :param episodes: number of episodes.
    :param n_bins: values per continuous action dimension (as the runs use).
    """
    from envs import make_env

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
    """SGD's rate with the best mean over seeds of the *selection* value (test values are never read).

    Non-finite selection values count as the floor. Ties go to the smaller rate.

    :param results: any results; only SGD's are used.
    :param metric: the scoring.
    :return: the chosen rate (None without SGD runs) and each rate's mean selection value.
    """
    by_rate: dict[float, list[float]] = {}
    for r in results:
        if r.method == "sgd" and r.lr is not None:
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
        runs = [r for r in results if r.method == method and (method != "sgd" or r.lr == best_rate)]
        lr = best_rate if method == "sgd" else None
        rows.append(_summary_of(method, runs, metric, lr, resamples, seed))
    return rows, best_rate, selection_means


# --- outputs ---------------------------------------------------------------------------------------


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
    order = {m: i for i, m in enumerate((*BASE_METHODS, *PEERS))}
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
    """The paper's row order: SGD, Adam, Alrao, then the peers as given."""
    first = ("sgd", "adam", "alrao")
    return [m for m in first if m in methods] + [m for m in methods if m not in first]


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
    if row.method == "sgd":
        return "none" if row.lr is None else f"{_fmt_rate(row.lr)} (selected)"
    if row.method == "adam":
        return "1e-3 (default)"
    if row.method == "alrao":
        return f"[{_fmt_rate(info.eta_min)}, {_fmt_rate(info.eta_max)}], {info.heads} heads"
    return "default (tuning-free)"


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
    unit = f", {metric.unit}" if metric.unit else ""
    seeds = ", ".join(str(s) for s in info.seeds)
    names = [LABELS.get(x, x) for x in info.methods]
    lines = [
        f"# {info.problem}: {', '.join(names)}",
        "",
        f"{len(info.seeds)} seed{'s' if len(info.seeds) != 1 else ''} ({seeds}), {info.budget} per run. "
        f"The layout of the paper's Table 1: SGD's "
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
        label = "SGD with optimal LR" if row.method == "sgd" else row.label + (" (default)" if row.method == "adam"
                                                                                 else "")
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
    alrao, sgd = by_method.get("alrao"), by_method.get("sgd")
    if alrao is not None and sgd is not None and sgd.runs and alrao.runs:
        ratio = alrao.mean / sgd.mean if sgd.mean != 0 else math.nan
        line = (f"**Ratio Alrao / best SGD** (mean test {m}): {_fmt(alrao.mean)} / {_fmt(sgd.mean)} = "
                f"{ratio:.3f}")
        if m == "return" and alrao.mean < 0 and sgd.mean < 0:
            line += " (returns are negative here: above 1 means Alrao's return is lower than SGD's)"
        elif m == "return":
            line += " (above 1: Alrao's return is higher than SGD's)"
        else:
            line += " (below 1: Alrao's loss is lower than SGD's)"
        lines.append(line + ".")
        gain = sgd.mean - metric.floor
        if m == "return" and gain != 0:
            lines += ["", f"Alrao's gain over a random policy as a fraction of the best SGD rate's: "
                          f"({_fmt(alrao.mean)} − {_fmt(metric.floor)}) / ({_fmt(sgd.mean)} − {_fmt(metric.floor)}) "
                          f"= {(alrao.mean - metric.floor) / gain:.2f} (1: as good as the best SGD rate; 0: as good "
                          f"as a random policy)."]
        lines.append("")

    if selection_means:
        lines += [
            "## The SGD grid",
            "",
            f"The rate with the best selection {m} (mean over seeds) is selected; its test {m} is only read "
            f"afterwards.",
            "",
            f"| SGD rate | Selection {m} (mean over seeds) | Test {m} (mean ± std) | Failed runs |",
            "|---|---|---|---|",
        ]
        for rate, mean_selection in selection_means.items():
            runs = [r for r in results if r.method == "sgd" and r.lr == rate]
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
        f"- Methods: {', '.join(names)}. SGD grid: {{{', '.join(_fmt_rate(x) for x in info.sgd_grid)}}}. "
        f"Alrao: per-unit rates log-uniform in [{_fmt_rate(info.eta_min)}, {_fmt_rate(info.eta_max)}], "
        f"{info.heads} heads. Adam and the tuning-free peers run with their default settings.",
        f"- Selection: {info.selection}. Test: {info.test}.",
        f"- Failed run: an error during the run; a non-finite selection or test {m}, or non-finite outputs of "
        f"the final network (divergence); "
        + ("a final greedy policy that takes one single action in every test episode (a dead network); "
           if m == "return" else "")
        + f"or a test "
        f"{m} worse than the floor, {_fmt(metric.floor)}{' ' + metric.unit if metric.unit else ''}: "
        f"{info.floor_detail}. Failed runs stay in every "
        f"statistic; a non-finite value enters the means, the IQM and SGD's selection as the floor.",
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
        f"![test {m} against the SGD rate](rates.png)  \nFinal test {m} against SGD's learning rate (dots: seeds; "
        f"line: mean); Alrao, Adam and the peers as horizontal bands (mean ± std): what the grid search costs.",
        "",
        "![Alrao switch posterior](posterior.png)  \nAlrao's switch posterior over its heads during training "
        "(one panel per seed; the paper's Figure 4).",
        "",
    ]
    return "\n".join(lines)


# --- figures ---------------------------------------------------------------------------------------

_COLORS = {"alrao": "tab:red", "adam": "tab:blue", "sgd": "tab:green", "prodigy": "tab:purple",
           "dadapt-sgd": "tab:brown", "dadapt-adam": "tab:pink", "dog": "tab:olive", "sf-sgd": "tab:cyan",
           "sf-adamw": "tab:orange"}


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
    best_label = None if best_rate is None else f"sgd-lr{best_rate:g}"
    others = sorted((label for label in curves if label.startswith("sgd-") and label != best_label),
                    key=lambda s: float(s.split("lr")[1]))
    shades = np.linspace(0.75, 0.35, max(len(others), 1))
    all_values: list[float] = []
    for i, label in enumerate(others):
        xs, ys = curves[label]
        with np.errstate(all="ignore"), _quiet():
            mean = np.nanmean(np.vstack(ys), axis=0)
        rate = _fmt_rate(float(label.split("lr")[1]))
        ax.plot(xs, mean, color=str(shades[i]), lw=1, ls="--", label=f"SGD {rate} (mean)")
        all_values += [v for v in mean if math.isfinite(v)]
    banded = [m for m in info.methods if m != "sgd"]
    for method in [*(["sgd"] if best_label else []), *banded]:
        label = best_label if method == "sgd" else method
        if label not in curves:
            continue
        xs, ys = curves[label]
        stack = np.vstack(ys)
        with np.errstate(all="ignore"), _quiet():
            mean, low, high = np.nanmean(stack, 0), np.nanmin(stack, 0), np.nanmax(stack, 0)
        name = f"SGD {_fmt_rate(best_rate or 0.0)} (selected)" if method == "sgd" else LABELS.get(method, method)
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
    """Left: every SGD rate; right: the same, zoomed on the best rate and the other methods' bands."""
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
    near += [r.test for r in results if r.method == "sgd" and r.lr == best_rate and math.isfinite(r.test)]
    near = [v for v in near if math.isfinite(v)]
    if near:
        low, high = min(near), max(near)
        margin = 0.15 * (high - low) or 0.05 * abs(high) or 1.0
        zoom.set_ylim(low - margin, high + margin)
    zoom.set_title("zoom on the best rate and the other methods")
    zoom.set_ylabel("")
    fig.suptitle(_title(info, f"final test {metric.name} against the SGD learning rate"))
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
    sgd = sorted((r for r in results if r.method == "sgd" and r.lr is not None), key=lambda r: r.lr or 0.0)
    rates = sorted({r.lr for r in sgd if r.lr is not None})
    ok = [(r.lr, r.test) for r in sgd if not failure_reason(r, metric)]
    bad = [(r.lr, metric.or_floor(r.test)) for r in sgd if failure_reason(r, metric)]
    if ok:
        ax.scatter(*zip(*ok, strict=True), s=14, color="tab:green", alpha=0.5, label="SGD: one seed", zorder=3)
    if bad:
        ax.scatter(*zip(*bad, strict=True), s=30, marker="x", color="black", zorder=3,
                   label="SGD: failed seed (a non-finite value is drawn at the floor)")
    if rates:
        means = [float(np.mean([metric.or_floor(r.test) for r in sgd if r.lr == rate])) for rate in rates]
        ax.plot(rates, means, color="tab:green", marker="o", lw=1.8, label="SGD: mean over seeds", zorder=4)
        if best_rate is not None:
            y = means[rates.index(best_rate)]
            ax.scatter([best_rate], [y], s=180, marker="*", color="gold", edgecolor="black", zorder=5,
                       label=f"selected rate {_fmt_rate(best_rate)} (on selection data)")
    for row in rows:
        if row.method == "sgd" or not row.runs:
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
    ax.set_xlabel("SGD learning rate (log scale)")
    ax.set_ylabel(f"final test {metric.name}" + (f" ({metric.unit})" if metric.unit else ""))
    ax.grid(alpha=0.3)


def _read_posterior(logdir: str) -> tuple[np.ndarray, np.ndarray] | None:
    """Steps and ``[heads, steps]`` posterior from the TensorBoard scalars ``alrao/posterior/head_{j}``."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    if not os.path.isdir(logdir):
        return None
    acc = EventAccumulator(logdir, size_guidance={"scalars": 0})
    acc.Reload()
    prefix = "alrao/posterior/head_"
    tags = sorted((t for t in acc.Tags().get("scalars", []) if t.startswith(prefix)),
                  key=lambda t: int(t[len(prefix):]))
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
