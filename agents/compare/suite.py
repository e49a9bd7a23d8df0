"""Suites: several envs compared with one command (``compare.py --suite paper``), each env a sweep of its own.

The ``paper`` suite is the paper's Table 1 at its scale (10 seeds) on more envs, with the same DQN defaults
for every method and env (no per-env tuning: that is the point):

=================  =============  =====================================================================
env                steps per run  methods
=================  =============  =====================================================================
Pendulum-v1        30,000         Alrao, the SGD grid, Adam, AdaQN, Prodigy, D-Adapt Adam, DoG, SF-AdamW
CartPole-v1        50,000         the same
LunarLander-v3     250,000        Alrao, the SGD grid, Adam, AdaQN
MountainCar-v0     120,000        Alrao, the SGD grid, Adam, AdaQN
=================  =============  =====================================================================

Each env is the sweep ``compare.py --env <env> --total-steps <steps> --seeds <n> --methods <methods>
--out <out>/<folder>`` (:func:`env_arguments`), with its own report; :mod:`agents.compare.aggregate`
summarizes the finished envs.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["SUITES", "SUITE_SEEDS", "SuiteEnv", "env_arguments", "select_envs"]

CORE_METHODS: tuple[str, ...] = ("alrao", "sgd", "adam", "adaqn")
PEER_METHODS: tuple[str, ...] = ("prodigy", "dadapt-adam", "dog", "sf-adamw")


@dataclass(frozen=True)
class SuiteEnv:
    """One env of a suite.

    :param env: gymnasium id.
    :param total_steps: environment steps per run.
    :param methods: the methods compared (``sgd``: the whole grid).
    :param folder: the env's output folder, under the suite's.
    """

    env: str
    total_steps: int
    methods: tuple[str, ...]
    folder: str


SUITES: dict[str, tuple[SuiteEnv, ...]] = {
    "paper": (
        SuiteEnv("Pendulum-v1", 30_000, (*CORE_METHODS, *PEER_METHODS), "pendulum"),
        SuiteEnv("CartPole-v1", 50_000, (*CORE_METHODS, *PEER_METHODS), "cartpole"),
        SuiteEnv("LunarLander-v3", 250_000, CORE_METHODS, "lunarlander"),
        SuiteEnv("MountainCar-v0", 120_000, CORE_METHODS, "mountaincar"),
    ),
}
"""The suites, by name."""
SUITE_SEEDS = 10
"""Seeds per method and rate in a suite (the paper's Table 1: 10 runs)."""


def select_envs(suite: str, envs: Sequence[str] | None = None) -> tuple[SuiteEnv, ...]:
    """The envs of ``suite``, or only those named in ``envs`` (in the suite's order).

    :raises ValueError: for an unknown suite or an env the suite does not have.
    """
    if suite not in SUITES:
        raise ValueError(f"suite must be one of {list(SUITES)}, got {suite!r}")
    entries = SUITES[suite]
    if envs is None:
        return entries
    known = [e.env for e in entries]
    for env in envs:
        if env not in known:
            raise ValueError(f"suite {suite!r} has no env {env!r} (it has {', '.join(known)})")
    return tuple(e for e in entries if e.env in envs)


def env_arguments(entry: SuiteEnv, seeds: int, out: str) -> list[str]:
    """The ``compare.py`` arguments of one env's sweep (the suite's other options are appended to them)."""
    return ["--env", entry.env, "--total-steps", str(entry.total_steps), "--seeds", str(seeds),
            "--methods", ",".join(entry.methods), "--out", os.path.join(out, entry.folder)]
