"""DQN (Mnih et al. 2015) with soft target updates, trained by Alrao, SGD or Adam, or as AdaQN.

The training loop in :func:`train` reads like the algorithm box::

    for t = 1..T:
        a_t = epsilon-greedy(Q(s_t, .))                                   # act
        store (s_t, a_t, r_t, s_{t+1}, terminated_t)                      # store
        sample a minibatch (s, a, r, s', d)                               # sample
        y = r + gamma (1 - d) max_a' Q_target(s', a')                     # TD target
        loss: Alrao mixture NLL of y (each head also on its own), or Huber(Q(s, a), y)
        gradient step; Alrao: switch update with each head's log-likelihood
        theta_target <- (1 - tau) theta_target + tau theta                # soft target update

**Alrao in RL.** The Q-network's body gets per-unit rates in ``[eta_min, eta_max]``; its output
layer becomes ``heads`` Gaussian regression heads; ``Q(s, .)`` is their average. Unlike supervised
targets, TD targets are computed from the model's own average, and TD errors have the scale of the
returns (tens on Pendulum). The choices (their measured effect is in the README's DQN section):

* **filtered posterior** for acting, targets and the mixture loss: ``P(head at t = j | data 1..t)``
  gives weight 0 to a head whose likelihood collapsed, where the predictive posterior keeps a
  floor of about ``1/(t N)`` that lets one head at 1e30 poison every target
  (:class:`alrao_rl.AlraoModel` with ``averaging="filtered"``);
* **Adam's step at every unit's own rate, on rescaled targets** (the defaults ``alrao_optimizer="adam"``,
  ``eta_min=1e-6``, ``eta_max=0.1``, ``value_norm="popart"``, ``td_variance="unit"``): the body grows its
  features as it learns, and a plain SGD step of head ``j`` moves by ``eta_j lambda / sigma^2`` along the
  features' top curvature ``lambda``, so the fast heads die in order of rate and the switch ends on the
  slowest one. Adam's step does not depend on that scale, so the heads' log-spaced rates keep their meaning;
  the heads learn TD targets divided by their running root mean square (:class:`alrao_rl.PopArt`, the heads
  rescaled so that their Q-values never jump), scored by the paper's unit-variance likelihood. The paper's
  AlraoSGD is ``alrao_optimizer="sgd", eta_min=1e-5, eta_max=10, value_norm="none", td_variance="running"``
  (the heads' variance then follows the running mean of the squared TD error, so that the likelihood has
  the scale of the TD errors);
* **runaway body units** are zeroed and frozen by the Alrao optimizer once a weight is non-finite or
  exceeds ``max_weight`` (100); the heads are only checked for finiteness;
* **non-finite heads** are left out of the average and the loss (the core does it).

Other options measured against the heads' rate grid (README, "What makes Alrao work in RL"):
``head_step="normalized"``, ``td_variance="switch"`` (the loss at variance 1, the switch at the running
variance).

**AdaQN** (``method="adaqn"``, :mod:`agents.adaqn`): ``K`` online networks with Adam at the rates
``adaqn_rates`` learn from the same minibatches and one TD target; the target follows the network with
the smallest TD loss over each window of ``adaqn_window`` gradient steps, which also acts.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
from torch import Tensor, nn

from alrao_rl import AlraoAdam, AlraoModel, AlraoSGD, AlraoStep, PopArt, RunningVariance
from alrao_rl.checkpoint import (
    CheckpointError,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
    stop_requests,
    write_text_atomic,
)
from alrao_rl.rates import check_interval
from envs import make_env

from .replay_buffer import ReplayBuffer, TorchReplayBatch

__all__ = [
    "ALRAO_SGD",
    "DQNAgent",
    "DQNConfig",
    "evaluate",
    "linear_schedule",
    "make_q_network",
    "soft_update",
    "td_target",
    "train",
]

logger = logging.getLogger(__name__)

Method = Literal["alrao", "sgd", "adam", "adaqn"]
OptimizerFactory = Callable[[Iterator[nn.Parameter]], torch.optim.Optimizer]
METHODS: tuple[str, ...] = ("alrao", "sgd", "adam", "adaqn")
ALRAO_OPTIMIZERS: dict[str, type[AlraoSGD] | type[AlraoAdam]] = {"sgd": AlraoSGD, "adam": AlraoAdam}
"""The Alrao optimizer of ``alrao_optimizer``."""
ALRAO_SGD: dict[str, Any] = {"alrao_optimizer": "sgd", "eta_min": 1e-5, "eta_max": 10.0, "value_norm": "none",
                             "td_variance": "running"}
"""The paper's AlraoSGD for DQN (the defaults before AlraoAdam on PopArt targets): ``DQNConfig(**ALRAO_SGD)``;
on the command line ``--alrao-optimizer sgd --eta-min 1e-5 --eta-max 10 --value-norm none --td-variance running``."""


@dataclass
class DQNConfig:
    """Everything a DQN run depends on. Defaults are shared by every method and every env.

    The defaults follow the DQN settings used for Alrao's RL experiments (paper, Appendix D: soft
    target updates, a replay buffer of 1,000,000, an MLP with 2 hidden layers) and the field's DQN
    settings for LunarLander-v3 (RL Baselines3 Zoo: an MLP 256-256, batch 128, a gradient step
    every 4 environment steps, epsilon 1 -> 0.1 over 12,000 steps), under which Adam and SGD at its
    best rate land LunarLander; gamma 0.99 and learning starts at 1,000 as CleanRL's and SB3's DQN.
    """

    env: str = "Pendulum-v1"
    """gymnasium environment id (continuous actions are discretized)."""
    method: str = "alrao"
    """'alrao' (per-unit rates, N heads + switch; alrao_optimizer), 'sgd' (torch SGD at lr), 'adam' (torch Adam)
    or 'adaqn' (AdaQN: one network per rate of adaqn_rates, each with its own Adam; the target follows the best)."""
    lr: float | None = None
    """learning rate for sgd (required) and adam (default 1e-3); for alrao a multiplier on every
    Alrao rate (default 1.0); adaqn takes none (its rates are adaqn_rates)."""
    eta_min: float = 1e-6
    """Alrao: lower end of the log-uniform interval of per-unit rates (AlraoSGD, the paper's: 1e-5)."""
    eta_max: float = 0.1
    """Alrao: upper end of the interval (AlraoSGD, the paper's: 10)."""
    heads: int = 10
    """Alrao: number of output heads."""
    adaqn_rates: tuple[float, ...] = (1e-5, 1e-4, 1e-3, 1e-2)
    """AdaQN: Adam's learning rate of each online network, one network per rate (4 as the authors' default; a
    decade apart as the paper's SGD grid, around Adam's default 1e-3, inside the authors' range [1e-6, 1e-2])."""
    adaqn_window: int = 100
    """AdaQN: gradient steps between two selections of the network the target follows and that acts, each on
    the TD losses summed over the window (100 = 1/tau, the soft target's time constant)."""
    total_steps: int = 30_000
    """environment steps."""
    seed: int = 0
    """seeds the network init, the Alrao rates, the env, exploration and replay sampling."""
    eval_every: int = 5_000
    """environment steps between greedy evaluations."""
    eval_episodes: int = 10
    """episodes per evaluation (each with its own fixed seed)."""
    n_bins: int = 5
    """values per continuous action dimension (Pendulum's torque: 5 values in [-2, 2])."""
    hidden: tuple[int, int] = (256, 256)
    """widths of the Q-network's two hidden layers."""
    batch_size: int = 128
    """minibatch size."""
    gamma: float = 0.99
    """discount factor."""
    tau: float = 0.01
    """soft target update rate: target <- (1 - tau) target + tau online, every gradient step."""
    buffer_size: int = 1_000_000
    """replay buffer capacity (transitions)."""
    learning_starts: int = 1_000
    """environment steps before the first gradient step."""
    train_freq: int = 4
    """environment steps between gradient steps."""
    eps_start: float = 1.0
    """initial exploration rate."""
    eps_end: float = 0.1
    """final exploration rate."""
    exploration_steps: int = 12_000
    """steps over which epsilon decays linearly."""
    td_variance: str = "unit"
    """Alrao: the heads' Gaussian variance: 'unit' (1, as in the paper: on PopArt targets), 'running' (a running
    mean of the averaged model's squared TD error, so the likelihood has the scale of the TD errors: AlraoSGD on
    raw targets) or 'switch' (the loss at variance 1, the switch scoring the heads at the running variance)."""
    max_weight: float | None = 100.0
    """Alrao: freeze a unit once one of its weights exceeds this (None: only non-finite ones)."""
    averaging: str = "filtered"
    """Alrao: 'filtered' or 'predictive' switch posterior for acting, targets and loss."""
    head_step: str = "plain"
    """Alrao: each head's own step 'plain' (Algorithm 1's eta_j grad) or 'normalized' (divided by the
    trace of its curvature, E||[z, 1]||^2 / sigma^2: the heads' rates keep their meaning while the body's
    features grow; measured in the README: no dead heads, lower returns)."""
    alrao_optimizer: str = "adam"
    """Alrao: 'adam' (AlraoAdam: Adam's step at every unit's own rate) or 'sgd' (AlraoSGD, the paper's; give it
    its interval, eta_min 1e-5 and eta_max 10, and value_norm 'none' with td_variance 'running')."""
    value_norm: str = "popart"
    """Alrao: 'popart' (the heads learn the TD targets divided by their running root mean square, and are
    rescaled with it so that their Q-values never jump: alrao_rl.PopArt) or 'none' (the TD targets as they are)."""
    checkpoint_every: int = 10_000
    """steps between checkpoints (written at the next episode end)."""

    def __post_init__(self) -> None:
        self.hidden = tuple(self.hidden)  # type: ignore[assignment]
        if isinstance(self.adaqn_rates, (list, tuple)):
            self.adaqn_rates = tuple(self.adaqn_rates)
        self.validate()

    def validate(self) -> None:
        """Check every field; raise ``ValueError``/``TypeError`` naming the field and value."""
        if self.method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.method == "sgd" and self.lr is None:
            raise ValueError("method 'sgd' needs a learning rate (lr)")
        if self.method == "adaqn" and self.lr is not None:
            raise ValueError(f"method 'adaqn' trains at the rates adaqn_rates and takes no lr, got {self.lr}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a finite number > 0, got {self.lr}")
        check_interval(self.eta_min, self.eta_max)
        positive = (
            "heads",
            "total_steps",
            "eval_every",
            "eval_episodes",
            "batch_size",
            "buffer_size",
            "train_freq",
            "checkpoint_every",
            "adaqn_window",
        )
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("learning_starts", "exploration_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0 <= self.seed < 2**31:
            raise ValueError(f"seed must be in [0, 2**31), got {self.seed}")
        if self.n_bins < 2:
            raise ValueError(f"n_bins must be >= 2, got {self.n_bins}")
        if len(self.hidden) != 2 or min(self.hidden) < 1:
            raise ValueError(f"hidden must be two widths >= 1, got {self.hidden}")
        if not 0.0 <= self.gamma <= 1.0:
            raise ValueError(f"gamma must be in [0, 1], got {self.gamma}")
        if not 0.0 < self.tau <= 1.0:
            raise ValueError(f"tau must be in (0, 1], got {self.tau}")
        for name in ("eps_start", "eps_end"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.max_weight is not None and not self.max_weight > 0:
            raise ValueError(f"max_weight must be > 0, got {self.max_weight}")
        if self.td_variance not in ("unit", "running", "switch"):
            raise ValueError(f"td_variance must be 'unit', 'running' or 'switch', got {self.td_variance!r}")
        if self.averaging not in ("filtered", "predictive"):
            raise ValueError(f"averaging must be 'filtered' or 'predictive', got {self.averaging!r}")
        if self.head_step not in ("normalized", "plain"):
            raise ValueError(f"head_step must be 'normalized' or 'plain', got {self.head_step!r}")
        if self.alrao_optimizer not in ALRAO_OPTIMIZERS:
            raise ValueError(f"alrao_optimizer must be one of {tuple(ALRAO_OPTIMIZERS)}, got {self.alrao_optimizer!r}")
        if self.value_norm not in ("popart", "none"):
            raise ValueError(f"value_norm must be 'popart' or 'none', got {self.value_norm!r}")
        rates = self.adaqn_rates
        if not isinstance(rates, tuple) or not all(isinstance(r, (int, float)) and not isinstance(r, bool)
                                                   for r in rates):
            raise TypeError(f"adaqn_rates must be a sequence of numbers, got {rates!r}")
        if not rates or not all(math.isfinite(r) and r > 0 for r in rates):
            raise ValueError(f"adaqn_rates must be one or more finite numbers > 0, got {list(rates)}")

    @property
    def effective_lr(self) -> float | None:
        """The learning rate (or Alrao multiplier) actually used; None for AdaQN (its rates are ``adaqn_rates``)."""
        if self.lr is not None:
            return self.lr
        if self.method == "adaqn":
            return None
        return 1.0 if self.method == "alrao" else 1e-3


# --- small pure helpers, each the formula it names -------------------------------------------


def linear_schedule(start: float, end: float, duration: int, t: int) -> float:
    """``start + (end - start) * min(t / duration, 1)``; ``end`` when ``duration == 0``."""
    if duration <= 0:
        return end
    return start + (end - start) * min(t / duration, 1.0)


def td_target(rewards: Tensor, terminated: Tensor, next_q_max: Tensor, gamma: float) -> Tensor:
    """``y = r + gamma (1 - terminated) max_a' Q_target(s', a')``: bootstrap unless terminated."""
    return rewards + gamma * (1.0 - terminated) * next_q_max


@torch.no_grad()
def soft_update(target: list[Tensor], online: list[Tensor], tau: float) -> None:
    """Polyak update of parameters: ``theta_target <- (1 - tau) theta_target + tau theta``."""
    torch._foreach_lerp_(target, online, tau)


def make_q_network(obs_dim: int, n_actions: int, config: DQNConfig) -> nn.Module:
    """The Q-network: MLP ``obs -> h1 -> h2 -> n_actions`` (ReLU); with Alrao, an
    :class:`alrao_rl.AlraoModel` whose output layer is ``config.heads`` regression heads (AdaQN: one of its
    online networks)."""
    h1, h2 = config.hidden
    body = nn.Sequential(nn.Linear(obs_dim, h1), nn.ReLU(), nn.Linear(h1, h2), nn.ReLU())
    head = nn.Linear(h2, n_actions)
    if config.method == "alrao":
        return AlraoModel(body, head, n_heads=config.heads, task="regression", averaging=config.averaging,
                          head_step=config.head_step)
    return nn.Sequential(body, head)


class DQNAgent:
    """The Q-network, its target copy and optimizer, and one DQN gradient step.

    With AdaQN, ``q_net`` is the :class:`agents.adaqn.AdaQNetwork` of the online networks (its forward is
    the selected network's), ``optimizer`` their Adam (one parameter group per network) and ``adaqn`` the
    :class:`agents.adaqn.AdaQN` that updates them; ``adaqn`` is None for the other methods.

    :param obs_dim: observation size.
    :param n_actions: number of discrete actions.
    :param config: the run's configuration.
    :param optimizer_factory: builds the optimizer from the Q-network's parameters instead of
        ``config.method``'s (e.g. a tuning-free peer in ``scripts/compare.py``).
    """

    def __init__(
        self, obs_dim: int, n_actions: int, config: DQNConfig, optimizer_factory: OptimizerFactory | None = None
    ) -> None:
        from .adaqn import AdaQN  # (agents.adaqn builds on this module's helpers)

        self.config = config
        self.alrao = config.method == "alrao"
        self.adaqn: AdaQN | None = None
        torch.manual_seed(config.seed)
        # the heads' variance: a running mean of the averaged model's squared TD error, or 1
        self.variance: RunningVariance | float = RunningVariance() if config.td_variance != "unit" else 1.0
        if optimizer_factory is not None and config.method in ("alrao", "adaqn"):
            raise ValueError(f"optimizer_factory replaces the optimizer of a plain network; {config.method!r} has "
                             f"its own")
        if config.method == "adaqn":
            self.adaqn = AdaQN(lambda: make_q_network(obs_dim, n_actions, config), config.adaqn_rates,
                               seed=config.seed, window=config.adaqn_window, tau=config.tau, gamma=config.gamma,
                               total_steps=config.total_steps)
            self.q_net: nn.Module = self.adaqn.online
            self.target_net: nn.Module = self.adaqn.target
            self.optimizer: torch.optim.Optimizer = self.adaqn.optimizer
            self.alrao_step = None
            return
        self.q_net = make_q_network(obs_dim, n_actions, config)
        self.target_net = copy.deepcopy(self.q_net).requires_grad_(False)
        self._polyak_pairs = (list(self.target_net.parameters()), list(self.q_net.parameters()))
        lr = config.effective_lr
        assert lr is not None  # (only AdaQN has none)
        if optimizer_factory is not None:
            self.optimizer = optimizer_factory(self.q_net.parameters())
        elif self.alrao:
            self.optimizer = ALRAO_OPTIMIZERS[config.alrao_optimizer](
                self.q_net,
                eta_min=config.eta_min,
                eta_max=config.eta_max,
                seed=config.seed,
                lr=lr,
                max_weight=config.max_weight,
            )
        elif config.method == "sgd":
            self.optimizer = torch.optim.SGD(self.q_net.parameters(), lr=lr)
        else:
            self.optimizer = torch.optim.Adam(self.q_net.parameters(), lr=lr)
        self.alrao_step = AlraoStep(self.q_net, self.optimizer) if self.alrao else None  # type: ignore[arg-type]
        self.popart = PopArt() if self.alrao and config.value_norm == "popart" else None

    @property
    def variances(self) -> dict[str, float | RunningVariance]:
        """The step's ``variance`` (the loss's) and ``switch_variance`` (the switch's), as ``td_variance`` says."""
        if self.config.td_variance == "switch":
            return {"variance": 1.0, "switch_variance": self.variance}
        return {"variance": self.variance}

    @property
    def td_variance(self) -> float | None:
        """The heads' current Gaussian variance (None before the first Alrao update, and without Alrao)."""
        if not self.alrao:
            return None
        return self.variance.value if isinstance(self.variance, RunningVariance) else self.variance

    @torch.no_grad()
    def q_values(self, obs: Tensor, member: int | None = None) -> Tensor:
        """``Q(s, .)`` of the online network (Alrao: the heads' posterior mean; AdaQN: the selected network's,
        or network ``member``'s), ``[B, A]``, computed by batched kernels as one member of a population
        (``nn.Linear`` on one observation takes a matrix-vector kernel that rounds differently): a population's
        members act as their runs alone."""
        if self.alrao:
            q = self.q_net.predict(obs)
            return q if self.popart is None else self.popart.denormalize(q)
        net = self.q_net
        if self.adaqn is not None:
            net = self.adaqn.online.members[self.adaqn.selected if member is None else member]
        x = obs.unsqueeze(0)
        for module in net.modules():
            if isinstance(module, nn.Linear):
                x = torch.baddbmm(module.bias.view(1, 1, -1), x, module.weight.t().unsqueeze(0))
            elif not list(module.children()):
                x = module(x)
        return x.squeeze(0)

    @torch.no_grad()
    def target_q_values(self, obs: Tensor) -> Tensor:
        """``Q_target(s, .)``; Alrao: the target heads averaged with the *online* switch weights."""
        if self.alrao:
            q = self.target_net.predict(obs, switch=self.q_net.switch)
            return q if self.popart is None else self.popart.denormalize(q)
        return self.target_net(obs)

    def greedy_action(self, obs: np.ndarray) -> int:
        """``argmax_a Q(s, a)`` for one observation (AdaQN: the selected network's)."""
        return int(self.q_values(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0)).argmax())

    def behaviour_action(self, obs: np.ndarray, step: int) -> int:
        """The behaviour policy's action at environment step ``step`` when epsilon-greedy does not explore: the
        greedy action; AdaQN: the greedy action of the network :meth:`agents.adaqn.AdaQN.behaviour_member`
        draws (the selected one, or with probability ``epsilon_b(step)`` one drawn uniformly)."""
        if self.adaqn is None:
            return self.greedy_action(obs)
        member = self.adaqn.behaviour_member(step)
        return int(self.q_values(torch.as_tensor(obs, dtype=torch.float32).unsqueeze(0), member).argmax())

    def train_step(self, batch: TorchReplayBatch) -> float:
        """TD target -> loss -> gradient step -> (Alrao) switch update -> soft target update.

        :return: the loss value (Alrao: the mixture negative log-likelihood; AdaQN: the Huber loss of the
            network selected after the step).
        """
        if self.adaqn is not None:  # every network's step, the selection, the target's step towards it
            losses = self.adaqn.train_step(batch)
            return float(losses[self.adaqn.selected])
        config = self.config
        next_q_max = self.target_q_values(batch.next_observations).max(dim=1).values
        y = td_target(batch.rewards, batch.terminated, next_q_max, config.gamma)
        if self.alrao_step is not None:  # the fused step: loss, backward, step and switch update at once
            if self.popart is not None:  # the heads learn y normalized; online and target heads keep their outputs
                y = self.popart.update(y, (self.q_net.heads, self.target_net.heads))
            loss = self.alrao_step(batch.observations, y, index=batch.actions, **self.variances).loss
        else:
            q = self.q_net(batch.observations).gather(1, batch.actions.unsqueeze(1)).squeeze(1)
            huber = nn.functional.smooth_l1_loss(q, y)
            self.optimizer.zero_grad(set_to_none=True)
            huber.backward()
            self.optimizer.step()
            loss = huber.item()
        soft_update(*self._polyak_pairs, config.tau)
        return loss

    def state_dict(self) -> dict[str, Any]:
        if self.adaqn is not None:
            return {**self.adaqn.state_dict(), "td_variance": None}
        return {
            "q_net": self.q_net.state_dict(),
            "target_net": self.target_net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "td_variance": self.td_variance,
            **({} if self.popart is None else {"popart": self.popart.state_dict()}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.adaqn is not None:
            self.adaqn.load_state_dict(state)
            return
        if isinstance(self.variance, RunningVariance):
            self.variance = RunningVariance(value=None if state["td_variance"] is None else float(state["td_variance"]))
        self.q_net.load_state_dict(state["q_net"])
        self.target_net.load_state_dict(state["target_net"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.popart is not None:
            self.popart.load_state_dict(state["popart"])


def evaluate(agent: DQNAgent, env: gym.Env, seeds: list[int]) -> tuple[float, float]:
    """Mean and standard deviation of the return of greedy episodes, one per seed."""
    returns = []
    for seed in seeds:
        obs, _ = env.reset(seed=seed)
        total, done = 0.0, False
        while not done:
            obs, reward, terminated, truncated, _ = env.step(agent.greedy_action(obs))
            total += float(reward)
            done = terminated or truncated
        returns.append(total)
    return float(np.mean(returns)), float(np.std(returns))


# --- run plumbing: outputs, checkpoints, signals ---------------------------------------------

COMPATIBLE_KEYS = (
    "env",
    "method",
    "lr",
    "eta_min",
    "eta_max",
    "heads",
    "seed",
    "n_bins",
    "hidden",
    "batch_size",
    "gamma",
    "tau",
    "td_variance",
    "buffer_size",
    "learning_starts",
    "train_freq",
    "eps_start",
    "eps_end",
    "exploration_steps",
    "max_weight",
    "averaging",
    "head_step",
    "value_norm",
    "alrao_optimizer",
    "adaqn_rates",
    "adaqn_window",
    "eval_every",
    "eval_episodes",
)


def _config_state(config: DQNConfig) -> dict[str, Any]:
    state = asdict(config)
    state["hidden"] = list(config.hidden)
    state["adaqn_rates"] = list(config.adaqn_rates)
    return state


def _as_used(state: dict[str, Any]) -> dict[str, Any]:
    """A config state with ``lr`` as used (its method's default when None, as :attr:`DQNConfig.effective_lr`):
    a run started with the default and resumed with it written out is the same run. A run saved before
    ``head_step`` existed took plain steps, one saved before ``value_norm`` (``alrao_optimizer``) existed no
    normalization (AlraoSGD); one saved
    before AdaQN existed was not AdaQN, whose settings it is given (they play no part in its method)."""
    if "head_step" not in state:
        state = {**state, "head_step": "plain"}
    if "value_norm" not in state:
        state = {**state, "value_norm": "none"}
    if "alrao_optimizer" not in state:
        state = {**state, "alrao_optimizer": "sgd"}
    for name in ("adaqn_rates", "adaqn_window"):
        if name not in state:
            state = {**state, name: _config_state(DQNConfig())[name]}
    if state.get("lr") is None and state.get("method") in ("alrao", "sgd", "adam"):
        return {**state, "lr": 1.0 if state["method"] == "alrao" else 1e-3}
    return state


@dataclass
class _Progress:
    """Counters that a checkpoint saves, so that a resumed run continues exactly."""

    step: int = 0
    episodes: int = 0
    updates: int = 0
    last_return: float = float("nan")
    evals: list[list[float]] = field(default_factory=list)
    wall_seconds: float = 0.0


def train(
    config: DQNConfig,
    logdir: str | None = None,
    *,
    resume: bool = False,
    progress: bool = True,
    optimizer_factory: OptimizerFactory | None = None,
) -> dict:
    """Run DQN; return the summary (also written to ``logdir/summary.json``).

    :param config: the run's configuration.
    :param logdir: folder for ``evals.csv``, ``summary.json``, ``checkpoint.pt`` and TensorBoard
        events (None: nothing is written).
    :param resume: continue from ``logdir/checkpoint.pt`` (which must come from the same config).
    :param progress: show a progress bar.
    :param optimizer_factory: see :class:`DQNAgent`.
    """
    from torch.utils.tensorboard import SummaryWriter
    from tqdm import tqdm

    env = make_env(config.env, config.seed, n_bins=config.n_bins)
    eval_env = make_env(config.env, config.seed, n_bins=config.n_bins)
    obs_dim = int(np.prod(env.observation_space.shape))
    n_actions = int(env.action_space.n)
    agent = DQNAgent(obs_dim, n_actions, config, optimizer_factory)
    # full capacity even for short runs (pages are only committed as they fill): a resumed run may be longer
    buffer = ReplayBuffer(env.observation_space.shape, config.buffer_size, seed=config.seed)
    rng = np.random.default_rng(config.seed)
    eval_seeds = [1_000_000 + 1000 * config.seed + k for k in range(config.eval_episodes)]
    state = _Progress()
    obs, _ = env.reset(seed=config.seed)

    ckpt_path = os.path.join(logdir, "checkpoint.pt") if logdir else None
    if resume:
        if ckpt_path is None or not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        saved = load_checkpoint(ckpt_path)
        if "population" in saved:
            raise CheckpointError(
                f"{ckpt_path!r} holds the final policy of a member of a population of {saved['population']}: "
                f"resume the population itself (run_dqn.py --seeds ... --resume)"
            )
        try:
            check_compatible(_as_used(saved["config"]), _as_used(_config_state(config)), COMPATIBLE_KEYS)
            agent.load_state_dict(saved["agent"])
            buffer.load_state_dict(saved["buffer"])
            rng.bit_generator.state = saved["rng"]
            env.unwrapped.np_random.bit_generator.state = saved["env_rng"]
            state = _Progress(**saved["progress"])
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"{ckpt_path!r} is a malformed checkpoint: {type(e).__name__}: {e}") from e
        if config.total_steps < state.step:  # the summary would contradict its own config
            raise ValueError(f"total_steps {config.total_steps} is below the {state.step} steps this run has "
                             f"already done; give at least {state.step} to resume it")
        obs, _ = env.reset()

    # A resumed run redoes the steps after its checkpoint: the events a killed run wrote for them are purged.
    writer = SummaryWriter(logdir, purge_step=state.step + 1 if resume else None) if logdir else None
    if writer is not None and agent.alrao and state.step == 0:
        rates = [
            s["alrao_rate"].flatten()
            for p, s in agent.optimizer.state.items()
            if any(p is q for q in agent.q_net.body.parameters())
        ]
        writer.add_histogram("alrao/log10_unit_rates", torch.cat(rates).log10(), 0)

    def checkpoint() -> None:
        if ckpt_path is None:
            return
        save_checkpoint(
            ckpt_path,
            {
                "config": _config_state(config),
                "agent": agent.state_dict(),
                "buffer": buffer.state_dict(),
                "rng": rng.bit_generator.state,
                "env_rng": env.unwrapped.np_random.bit_generator.state,
                "progress": asdict(state),
            },
        )

    session_start = time.perf_counter()
    previous_seconds = state.wall_seconds
    episode_return = 0.0
    last_checkpoint = state.step
    bar = tqdm(
        total=config.total_steps,
        initial=state.step,
        disable=not progress,
        unit="step",
        dynamic_ncols=True,
        desc=f"{config.method} {config.env}",
    )
    with stop_requests("episode") as stop:
        while state.step < config.total_steps:
            t = state.step
            # act: epsilon-greedy
            epsilon = linear_schedule(config.eps_start, config.eps_end, config.exploration_steps, t)
            explore = rng.random() < epsilon
            action = int(rng.integers(n_actions)) if explore else agent.greedy_action(obs)
            # store
            next_obs, reward, terminated, truncated, _ = env.step(action)
            buffer.add(obs, action, float(reward), next_obs, bool(terminated))
            obs = next_obs
            episode_return += float(reward)
            state.step += 1
            # learn: sample -> TD target -> loss -> step -> switch -> soft update
            if state.step > config.learning_starts and state.step % config.train_freq == 0:
                loss = agent.train_step(buffer.sample(config.batch_size).to_torch())
                state.updates += 1
                if writer is not None and state.updates % 100 == 0:
                    writer.add_scalar("train/loss", loss, state.step)
                    writer.add_scalar("train/epsilon", epsilon, state.step)
                    if agent.alrao:
                        _log_alrao(writer, agent, state.step)
                    if agent.adaqn is not None:
                        writer.add_scalar("adaqn/selected", agent.adaqn.selected, state.step)
            # evaluate
            if state.step % config.eval_every == 0 or state.step == config.total_steps:
                mean, std = evaluate(agent, eval_env, eval_seeds)
                state.evals.append([state.step, mean, std])
                if writer is not None:
                    writer.add_scalar("eval/return_mean", mean, state.step)
            # episode end
            if terminated or truncated:
                state.episodes += 1
                state.last_return = episode_return
                episode_return = 0.0
                if writer is not None:
                    writer.add_scalar("train/episode_return", state.last_return, state.step)
                state.wall_seconds = previous_seconds + time.perf_counter() - session_start
                if stop["stop"] or state.step - last_checkpoint >= config.checkpoint_every:
                    checkpoint()
                    last_checkpoint = state.step
                if stop["stop"]:
                    break
                obs, _ = env.reset()
            bar.update(1)
            if state.step % 200 == 0:
                postfix = {"return": f"{state.last_return:.1f}"}
                if agent.alrao:
                    postfix["best_head"] = int(agent.q_net.switch.posterior.argmax())
                if agent.adaqn is not None:
                    postfix["selected"] = agent.adaqn.selected
                bar.set_postfix(postfix, refresh=False)
    bar.close()
    session_seconds = time.perf_counter() - session_start
    state.wall_seconds = previous_seconds + session_seconds
    if writer is not None:
        writer.close()
    interrupted = state.step < config.total_steps
    if interrupted and ckpt_path is not None:
        logger.warning("stopped at step %d; continue with --resume", state.step)
    elif ckpt_path is not None:
        checkpoint()
    sps = state.step / max(state.wall_seconds, 1e-9)  # over every session of the run (resumed or not)
    summary = _summary(config, state, sps, interrupted, agent.td_variance,
                       adaqn=None if agent.adaqn is None else agent.adaqn.summary())
    if logdir is not None:
        write_run_outputs(logdir, state.evals, summary)
    env.close()
    eval_env.close()
    return summary


def write_run_outputs(logdir: str, evals: list[list[float]], summary: dict[str, Any]) -> None:
    """``evals.csv`` (``step,eval_return_mean,eval_return_std``) and ``summary.json``, atomically."""
    rows = io.StringIO()
    out = csv.writer(rows, lineterminator="\n")
    out.writerow(["step", "eval_return_mean", "eval_return_std"])
    out.writerows(evals)
    write_text_atomic(os.path.join(logdir, "evals.csv"), rows.getvalue())
    write_text_atomic(os.path.join(logdir, "summary.json"), json.dumps(summary, indent=2) + "\n")


def _log_alrao(writer: Any, agent: DQNAgent, step: int) -> None:
    """The averaging weight ``a_j`` each head gets (the posterior of ``config.averaging``: what acting, TD
    targets and the loss use) as ``alrao/posterior/head_{j}``, the tag SB3's ``AlraoDQN`` uses too; the heads'
    variance; the number of units the optimizer has frozen."""
    for j, a_j in enumerate(agent.q_net.averaging_log_weights().exp().tolist()):
        writer.add_scalar(f"alrao/posterior/head_{j}", a_j, step)
    if agent.td_variance is not None:
        writer.add_scalar("alrao/heads_variance", agent.td_variance, step)
    writer.add_scalar("alrao/frozen_units", agent.optimizer.frozen_units(), step)  # type: ignore[attr-defined]


def _summary(
    config: DQNConfig,
    state: _Progress,
    steps_per_second: float,
    interrupted: bool,
    agent_td_variance: float | None,
    adaqn: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The run's ``summary.json``; ``adaqn``: :meth:`agents.adaqn.AdaQN.summary` (None for other methods)."""
    evals = state.evals
    return {
        "env": config.env,
        "method": config.method,
        "lr": config.effective_lr,
        "eta_min": config.eta_min if config.method == "alrao" else None,
        "eta_max": config.eta_max if config.method == "alrao" else None,
        "heads": config.heads if config.method == "alrao" else 1,
        "seed": config.seed,
        "total_steps": state.step,
        "final_eval_return_mean": evals[-1][1] if evals else None,
        "final_eval_return_std": evals[-1][2] if evals else None,
        "best_eval_return_mean": max(e[1] for e in evals) if evals else None,
        "episodes": state.episodes,
        "td_variance": agent_td_variance,
        "adaqn": adaqn,
        "wall_seconds": round(state.wall_seconds, 2),
        "steps_per_second": round(steps_per_second, 1),
        "interrupted": interrupted,
        "config": _config_state(config),
    }
