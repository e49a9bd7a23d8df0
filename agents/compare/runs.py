"""Running one run of the sweep, in whichever process its backend chose: train it with the project's own
training function (:func:`agents.dqn.train`, :func:`alrao_rl.supervised.train.train_classifier`), test
it, record ``compare.json``; and finding a finished run on disk by the hash of its specification."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

from .plan import (
    BASE_METHODS,
    CONTINUOUS_TASKS,
    PEERS,
    RunSpec,
    continuous_config,
    dqn_config,
    run_dir,
    test_seeds,
    train_config,
)


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
    :param wall_seconds: training time of the run; a population member's share of its population's
        time (the population's wall time over its size), so that summing runs counts compute once.
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


# --- running one run (in a worker process) ---------------------------------------------------------


def _finite(value: Any) -> float:
    """``float(value)``, or NaN for None and non-numbers."""
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _one_line(text: str, limit: int = 300) -> str:
    """``text`` on one line, at most ``limit`` characters (errors go into tables)."""
    line = " ".join(str(text).split())
    return line if len(line) <= limit else line[: limit - 3] + "..."


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


def _run_continuous(spec: RunSpec, logdir: str) -> RunResult:
    from agents import continuous

    summary = continuous.train(continuous_config(spec), logdir, test_seeds(spec.seed, spec.test_episodes))
    test = _finite(summary["test_return_mean"])
    return RunResult(
        spec.method,
        spec.lr,
        spec.seed,
        selection=_finite(summary["final_eval_return_mean"]),
        test=test,
        test_std=_finite(summary["test_return_std"]),
        wall_seconds=_finite(summary["wall_seconds"]),
        outputs_finite=math.isfinite(test),
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
        if spec.task == "rl":
            result = _run_rl(spec, logdir)
        elif spec.task in CONTINUOUS_TASKS:
            result = _run_continuous(spec, logdir)
        else:
            result = _run_supervised(spec, logdir)
    except Exception as e:  # a crash is a failed run to report, not a reason to lose the sweep
        error = _one_line(f"{type(e).__name__}: {e}")
        result = RunResult(spec.method, spec.lr, spec.seed, math.nan, math.nan, error=error)
    result.logdir = os.path.relpath(logdir, out)
    if not result.error:
        record = {"config_hash": spec.config_hash(), "spec": asdict(spec), "result": result.to_json()}
        _atomic_json(os.path.join(logdir, "compare.json"), json.loads(json.dumps(record, default=repr)))
    return result


def population_member(spec: RunSpec) -> bool:
    """Whether ``spec`` can be trained as a member of a population (:mod:`agents.population`): an RL
    run of Alrao, SGD or Adam (AdaQN and the peers train alone)."""
    return spec.task == "rl" and spec.method in BASE_METHODS


def execute_population(specs: Sequence[RunSpec], out: str) -> list[RunResult]:
    """Train ``specs`` (RL runs sharing everything but seed, method and rate) as one population, test
    every member as :func:`execute_run` tests a run, and record each one's ``compare.json``.

    The population's checkpoint lives in ``out/runs/populations/<hash of its members>``: the same
    members run again resume it. An exception becomes a failed result for every member.

    :param specs: the members.
    :param out: the sweep's output folder.
    """
    from agents.population import PopulationDQN

    logdirs = [run_dir(out, spec) for spec in specs]
    members = hashlib.sha256(" ".join(sorted(s.config_hash() for s in specs)).encode()).hexdigest()[:16]
    checkpoint_dir = os.path.join(out, "runs", "populations", members)
    resume = os.path.exists(os.path.join(checkpoint_dir, "checkpoint.pt"))
    for logdir in logdirs:
        if not resume and os.path.isdir(logdir):  # an unfinished run of another kind: start afresh
            shutil.rmtree(logdir)
        os.makedirs(logdir, exist_ok=True)
    try:
        population = PopulationDQN([dqn_config(spec) for spec in specs])
        summaries = population.train(logdirs, checkpoint_dir, resume=resume, progress=False)
        if any(s["interrupted"] for s in summaries):
            raise InterruptedError(f"stopped at step {summaries[0]['total_steps']}")
        tests = population.test([test_seeds(spec.seed, spec.test_episodes) for spec in specs])
    except Exception as e:  # a crash is failed runs to report, not a reason to lose the sweep
        error = _one_line(f"{type(e).__name__}: {e}")
        return [RunResult(s.method, s.lr, s.seed, math.nan, math.nan, error=error, logdir=os.path.relpath(d, out))
                for s, d in zip(specs, logdirs, strict=True)]
    results = []
    for spec, logdir, summary, (mean, std, actions, finite) in zip(specs, logdirs, summaries, tests, strict=True):
        share = _finite(summary["wall_seconds"]) / len(specs)  # members train together: each its share
        result = RunResult(spec.method, spec.lr, spec.seed, selection=_finite(summary["final_eval_return_mean"]),
                           test=mean, test_std=std, wall_seconds=share,
                           logdir=os.path.relpath(logdir, out), outputs_finite=finite, distinct_actions=actions)
        record = {"config_hash": spec.config_hash(), "spec": asdict(spec), "result": result.to_json()}
        _atomic_json(os.path.join(logdir, "compare.json"), json.loads(json.dumps(record, default=repr)))
        results.append(result)
    shutil.rmtree(checkpoint_dir, ignore_errors=True)  # every member is recorded: nothing to resume
    return results


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
