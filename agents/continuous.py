"""SAC and TD3 runs on continuous actions, for comparisons: Alrao critics against a critic learning-rate grid.

Three methods, each Stable-Baselines3's algorithm with its defaults but for the critics' optimizer:

* ``alrao``: :class:`agents.sb3.AlraoSAC` / :class:`agents.sb3.AlraoTD3` (critics trained by AlraoSGD with
  per-unit rates in ``[eta_min, eta_max]``, ``heads`` heads each; the actor by SB3's Adam at its default rate);
* ``adam``: SB3's ``SAC`` / ``TD3`` as they come (Adam at 3e-4 / 1e-3 for actor and critics);
* ``critic-adam``: the same with the critics' Adam rate set to ``lr`` (the grid; actor and entropy
  coefficient keep SB3's default rate).

:func:`train` trains one run with greedy (deterministic) evaluations on seeded episodes, as
:func:`agents.dqn.train` does for DQN, and writes the same outputs to its logdir: ``evals.csv``
(``step,eval_return_mean,eval_return_std``), ``summary.json``, TensorBoard events (SB3's entries, and for
Alrao the critics' posteriors) and the final model (``model.zip``, SB3's format), then tests the final policy
on new seeded episodes if asked.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3 import SAC, TD3

__all__ = ["ALGOS", "METHODS", "ContinuousConfig", "evaluate", "make_agent", "train"]

ALGOS: tuple[str, ...] = ("sac", "td3")
METHODS: tuple[str, ...] = ("alrao", "adam", "critic-adam")
SELECTION_SEED_BASE = 1_000_000
"""Evaluation episodes during training are seeded ``1_000_000 + 1000 seed + k`` (as :func:`agents.dqn.train`)."""


@dataclass(frozen=True)
class ContinuousConfig:
    """One SAC or TD3 run.

    :param algo: ``"sac"`` or ``"td3"``.
    :param env: a gymnasium id with a ``Box`` action space.
    :param method: ``"alrao"``, ``"adam"`` (SB3's defaults) or ``"critic-adam"`` (the critics' Adam at ``lr``).
    :param lr: ``critic-adam``: the critics' learning rate (None for the other methods).
    :param seed: seeds SB3 (networks, exploration, replay), the Alrao rates and the environment.
    :param total_steps: environment steps.
    :param eval_every: environment steps between evaluations.
    :param eval_episodes: deterministic episodes per evaluation.
    :param learning_starts: environment steps before the first update (SB3's default 100).
    :param eta_min: Alrao: the lowest per-unit rate.
    :param eta_max: Alrao: the highest.
    :param heads: Alrao: heads per critic.
    """

    algo: str = "sac"
    env: str = "Pendulum-v1"
    method: str = "alrao"
    lr: float | None = None
    seed: int = 0
    total_steps: int = 20_000
    eval_every: int = 2_000
    eval_episodes: int = 5
    learning_starts: int = 100
    eta_min: float = 1e-5
    eta_max: float = 10.0
    heads: int = 10

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ValueError(f"algo must be one of {ALGOS}, got {self.algo!r}")
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if (self.method == "critic-adam") != (self.lr is not None):
            raise ValueError(f"lr is the critics' rate of method 'critic-adam' only (method {self.method!r}, "
                             f"lr {self.lr!r})")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        for name in ("total_steps", "eval_every", "eval_episodes", "heads"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be an int >= 1, got {value!r}")
        if isinstance(self.learning_starts, bool) or not isinstance(self.learning_starts, int) or \
                self.learning_starts < 0:
            raise ValueError(f"learning_starts must be an int >= 0, got {self.learning_starts!r}")
        if not (0 < self.eta_min < self.eta_max and math.isfinite(self.eta_max)):
            raise ValueError(f"need 0 < eta_min < eta_max < inf, got eta_min={self.eta_min}, eta_max={self.eta_max}")


class _CriticRate:
    """Mixed in before SB3's SAC/TD3: the critics' optimizer at ``critic_lr``, whatever ``learning_rate`` says
    (SB3 writes ``learning_rate`` into every optimizer before each ``train()``)."""

    critic_lr: float

    def _update_learning_rate(self, optimizers: Any) -> None:
        critic = self.critic.optimizer  # type: ignore[attr-defined]
        if not isinstance(optimizers, list):
            optimizers = [optimizers]
        super()._update_learning_rate([o for o in optimizers if o is not critic])  # type: ignore[misc]
        for group in critic.param_groups:
            group["lr"] = self.critic_lr


class _CriticRateSAC(_CriticRate, SAC):
    """SB3's SAC with the critics at ``critic_lr``."""


class _CriticRateTD3(_CriticRate, TD3):
    """SB3's TD3 with the critics at ``critic_lr``."""


def make_agent(config: ContinuousConfig, env: gym.Env | None = None) -> Any:
    """The SB3 model of ``config`` on ``env`` (default: ``gymnasium.make(config.env)``), SB3's defaults but for
    the critics (module docstring); CPU, seeded with ``config.seed``."""
    from agents.sb3 import AlraoSAC, AlraoTD3

    env = gym.make(config.env) if env is None else env
    if not isinstance(env.action_space, gym.spaces.Box):
        raise ValueError(f"env {config.env!r} has {type(env.action_space).__name__} actions; SAC and TD3 need a Box")
    common = {"seed": config.seed, "learning_starts": config.learning_starts, "device": "cpu"}
    if config.method == "alrao":
        cls = AlraoSAC if config.algo == "sac" else AlraoTD3
        policy_kwargs = {"eta_min": config.eta_min, "eta_max": config.eta_max, "n_heads": config.heads}
        return cls("MlpPolicy", env, policy_kwargs=policy_kwargs, **common)
    base = SAC if config.algo == "sac" else TD3
    if config.method == "adam":
        return base("MlpPolicy", env, **common)
    model = (_CriticRateSAC if config.algo == "sac" else _CriticRateTD3)("MlpPolicy", env, **common)
    model.critic_lr = config.lr
    return model


def evaluate(model: Any, env: gym.Env, seeds: list[int]) -> tuple[float, float]:
    """Mean and standard deviation of the return of deterministic episodes, one per seed
    (:func:`agents.dqn.evaluate`, acting with ``model.predict(obs, deterministic=True)``)."""
    from agents.dqn import evaluate as evaluate_episodes

    return evaluate_episodes(_Deterministic(model), env, seeds)  # type: ignore[arg-type]


class _Deterministic:
    """An SB3 model seen as :func:`agents.dqn.evaluate` sees an agent: ``greedy_action(obs)``."""

    def __init__(self, model: Any) -> None:
        self.model = model

    def greedy_action(self, obs: Any) -> Any:
        return self.model.predict(obs, deterministic=True)[0]


def _selection_seeds(config: ContinuousConfig) -> list[int]:
    return [SELECTION_SEED_BASE + 1000 * config.seed + k for k in range(config.eval_episodes)]


def _heads_summary(model: Any, config: ContinuousConfig) -> dict[str, Any]:
    """Alrao: per critic, the head with the largest averaging weight, its rate, and the dead heads."""
    from alrao_rl.rates import log_spaced

    if config.method != "alrao":
        return {}
    q_model = model.critic.q_model
    rates = log_spaced(config.heads, config.eta_min, config.eta_max).tolist()
    winners = q_model.averaging_log_weights().argmax(dim=1).tolist()
    return {"winner_heads": winners, "winner_rates": [rates[j] for j in winners],
            "dead_heads": q_model.heads.dead.sum(dim=1).tolist(), "heads_variance": model.heads_variance}


def train(config: ContinuousConfig, logdir: str, test_seeds: list[int] | None = None,
          progress: bool = False) -> dict[str, Any]:
    """Train ``config`` into ``logdir`` (module docstring); test the final policy on ``test_seeds`` if given.

    :return: the summary written to ``summary.json``: ``final_eval_return_mean`` (the last evaluation), the
        test return's mean and std (NaN without test seeds), ``wall_seconds``, ``total_steps``, and for Alrao
        each critic's winning head, its rate and the dead heads.
    """
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.logger import configure

    os.makedirs(logdir, exist_ok=True)
    torch.set_num_threads(1)
    model = make_agent(config)
    model.set_logger(configure(logdir, ["tensorboard"]))
    eval_env = gym.make(config.env)
    rows: list[tuple[int, float, float]] = []

    def evaluation(step: int) -> None:
        mean, std = evaluate(model, eval_env, _selection_seeds(config))
        rows.append((step, mean, std))
        model.logger.record("eval/return_mean", mean)

    class Evaluations(BaseCallback):
        def _on_step(self) -> bool:
            if self.num_timesteps % config.eval_every == 0:
                evaluation(self.num_timesteps)
            return True

    start = time.perf_counter()
    try:
        model.learn(config.total_steps, callback=Evaluations(), progress_bar=progress)
        if not rows or rows[-1][0] != config.total_steps:
            evaluation(config.total_steps)
        wall = time.perf_counter() - start
        test = evaluate(model, eval_env, test_seeds) if test_seeds else (math.nan, math.nan)
    finally:
        eval_env.close()
    with open(os.path.join(logdir, "evals.csv"), "w") as f:
        f.write("step,eval_return_mean,eval_return_std\n")
        f.writelines(f"{step},{mean!r},{std!r}\n" for step, mean, std in rows)
    fd, tmp = tempfile.mkstemp(dir=logdir, prefix=".model.", suffix=".zip")
    os.close(fd)
    model.save(tmp)
    os.replace(tmp, os.path.join(logdir, "model.zip"))
    summary = {
        "config": asdict(config),
        "total_steps": config.total_steps,
        "final_eval_return_mean": rows[-1][1],
        "test_return_mean": test[0],
        "test_return_std": test[1],
        "wall_seconds": wall,
        "interrupted": False,
        **_heads_summary(model, config),
    }
    with open(os.path.join(logdir, "summary.json"), "w") as f:
        json.dump({k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in summary.items()},
                  f, indent=2)
        f.write("\n")
    model.logger.close()
    return summary

