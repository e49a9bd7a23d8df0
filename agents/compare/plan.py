"""What a sweep runs: the methods (:data:`BASE_METHODS`, the DQN-only :data:`RL_METHODS` and the tuning-free
:data:`PEERS`), one run's
:class:`RunSpec` and the hash that identifies it on disk, :func:`plan_runs`, where a run writes, the seeds
of its test episodes, and the training configuration built from a spec."""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import math
import os
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

TASKS: tuple[str, ...] = ("rl", "sac", "td3", "cifar", "ptb")
"""``rl``: DQN on a gymnasium env; ``sac``, ``td3``: SB3's SAC and TD3 on continuous actions (Alrao critics,
:mod:`agents.continuous`); ``cifar``, ``ptb``: the supervised tasks of the paper."""
CONTINUOUS_TASKS: tuple[str, ...] = ("sac", "td3")
"""The tasks of :mod:`agents.continuous`: their methods are :data:`agents.continuous.METHODS`."""
BASE_METHODS: tuple[str, ...] = ("alrao", "sgd", "adam")
"""Methods the training functions know; peers replace the optimizer of a plain network."""
RL_METHODS: tuple[str, ...] = ("adaqn",)
"""Methods only :func:`agents.dqn.train` knows (``--task rl``): AdaQN, ``K`` Adam networks at a grid of rates
whose best gives the target (:mod:`agents.adaqn`), the closest RL rival of Alrao. Each run trains alone
(never as a population member)."""
DEFAULT_SGD_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0)
"""The paper's grid of SGD rates (Section 5)."""
DEFAULT_CRITIC_GRID: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2, 1e-1)
"""SAC/TD3: the grid of the critics' Adam rates (SB3's default, 3e-4 for SAC, lies inside)."""
GRID_METHODS: tuple[str, ...] = ("sgd", "critic-adam")
"""The methods run once per rate of the grid, whose rate is *selected*: SGD (DQN and supervised), the critics'
Adam rate (SAC/TD3). A sweep has one of them: :func:`grid_method`."""
GRID_NAMES: dict[str, str] = {"sgd": "SGD", "critic-adam": "critic Adam"}
"""How tables and plots name a grid method's runs (``SGD 1e-2``, ``critic Adam 1e-3``)."""
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


LABELS: dict[str, str] = {"alrao": "Alrao", "sgd": "SGD", "adam": "Adam", "adaqn": "AdaQN",
                          "critic-adam": "critic Adam", **{k: p.label for k, p in PEERS.items()}}


def grid_method(task: str) -> str:
    """The grid method of ``task``'s sweeps: ``"critic-adam"`` for SAC/TD3, ``"sgd"`` otherwise."""
    return "critic-adam" if task in CONTINUOUS_TASKS else "sgd"


def check_methods(methods: Sequence[str], task: str = "rl") -> None:
    """Refuse unknown methods, duplicates, and peers whose package is not installed.

    :param methods: method names (:data:`BASE_METHODS`, :data:`RL_METHODS` and :data:`PEERS` keys; for SAC/TD3
        :data:`agents.continuous.METHODS`).
    :param task: the sweep's task.
    :raises ValueError: one line naming the method, and for a missing package the extra to install.
    """
    known: tuple[str, ...] = (*BASE_METHODS, *RL_METHODS, *PEERS)
    if task in CONTINUOUS_TASKS:
        from agents.continuous import METHODS

        known = METHODS
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

    :param task: one of :data:`TASKS`.
    :param problem: the env id (RL) or the data set name (``"cifar10"``, ``"ptb-char"``).
    :param method: a base method or a peer (SAC/TD3: a method of :data:`agents.continuous.METHODS`).
    :param lr: the grid method's rate (None for every other method: they run with their defaults).
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
    :param methods: methods to run (checked by :func:`check_methods`; :data:`RL_METHODS` only for ``"rl"``).
    :param seeds: the seeds.
    :param sgd_grid: SGD's rates.
    :param options: training-configuration overrides shared by every run.
    :param test_episodes: RL: test episodes per run.
    :param data_dir: supervised: the data folder.
    :raises ValueError: for an unknown task, no seed, a rate that is not a finite number > 0, or a DQN-only
        method in a supervised sweep.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task != "rl":
        for method in methods:
            if method in RL_METHODS:
                raise ValueError(f"method {method!r} is a DQN method: it needs task 'rl', not {task!r}")
    check_methods(methods, task)
    if not seeds:
        raise ValueError("at least one seed is needed")
    for rate in sgd_grid:
        if not (math.isfinite(rate) and rate > 0):
            raise ValueError(f"SGD rates must be finite numbers > 0, got {rate}")
    for method in GRID_METHODS:
        if method in methods and not sgd_grid:
            raise ValueError(f"method {method!r} needs at least one rate in the grid")
    if not 1 <= test_episodes <= MAX_EPISODES:
        raise ValueError(f"test episodes must lie in 1..{MAX_EPISODES}, got {test_episodes}")
    shared = tuple(sorted((options or {}).items()))
    specs = []
    for seed in seeds:
        for method in methods:
            rates: Sequence[float | None] = sorted(set(sgd_grid)) if method in GRID_METHODS else [None]
            for rate in rates:
                specs.append(RunSpec(task, problem, method, rate, int(seed), shared, test_episodes, data_dir))
    return specs


def run_dir(out: str | os.PathLike[str], spec: RunSpec) -> str:
    """``out/runs/<label>/seed<k>``: where a run writes its outputs."""
    return os.path.join(os.fspath(out), "runs", spec.label, f"seed{spec.seed}")


def test_seeds(seed: int, episodes: int) -> list[int]:
    """Seeds of the test episodes of run ``seed``: ``2_000_000 + 1000 seed + k``, ``k < episodes``."""
    return [TEST_SEED_BASE + 1000 * seed + k for k in range(episodes)]


# --- the training configuration of a run -----------------------------------------------------------


def dqn_config(spec: RunSpec) -> Any:
    """The :class:`agents.dqn.DQNConfig` of an RL run (peers: a plain network, method ``"adam"``,
    whose optimizer is replaced)."""
    from agents.dqn import DQNConfig

    method = spec.method if spec.method in (*BASE_METHODS, *RL_METHODS) else "adam"
    return DQNConfig(env=spec.problem, method=method, lr=spec.lr, seed=spec.seed, **dict(spec.options))


def continuous_config(spec: RunSpec) -> Any:
    """The :class:`agents.continuous.ContinuousConfig` of a SAC/TD3 run."""
    from agents.continuous import ContinuousConfig

    return ContinuousConfig(algo=spec.task, env=spec.problem, method=spec.method, lr=spec.lr, seed=spec.seed,
                            **dict(spec.options))


def train_config(spec: RunSpec) -> Any:
    """The :class:`alrao_rl.supervised.train.TrainConfig` of a supervised run."""
    from alrao_rl.supervised.train import TrainConfig

    method = spec.method if spec.method in BASE_METHODS else "adam"
    return TrainConfig(task=spec.task, method=method, lr=spec.lr, seed=spec.seed, **dict(spec.options))
