"""Population training: many DQN runs in lockstep in one process, as batched networks.

A comparison (Alrao against an SGD grid and Adam over seeds) is dozens of small runs. Run alone, each
pays PyTorch's per-call cost on tiny tensors; held as one network whose weights have a leading member
dimension ``P`` (``[P, out, in]``, batched matmuls), ``P`` runs cost little more than one::

    population = PopulationDQN([DQNConfig(env="CartPole-v1", method=m, lr=lr, seed=s) for ...])
    summaries = population.train(logdirs, checkpoint_dir="runs/population")

A **member** is a :class:`agents.dqn.DQNConfig` that differs from the others only in ``seed``,
``method`` and ``lr``. Members of a method form a group trained by one step: Alrao members by the
core's fused step (:class:`alrao_rl.AlraoStep` on a model with members: per-unit rates ``[P, units]``,
heads ``[P, N, out, in]``, a switch and a heads' variance each), SGD members by SGD with one rate per
member, Adam members by Adam with one rate per member.

Each member is its single run (:func:`agents.dqn.train`), step for step: the same initial weights and
rates (built by :class:`agents.dqn.DQNAgent` with the member's seed), its own environment seeded and
reset as the single run's, its own exploration and replay-sampling generators, the same evaluation
episodes; only the arithmetic is batched (equal to the single run up to float rounding: tested on the
first 500 updates). Members never mix: a member that diverges (SGD at rate 10: NaN) stays in its own
slices, counted as failed exactly as its single run would be. Each member writes the single run's
outputs (``evals.csv``, ``summary.json``, TensorBoard events) to its own logdir; the population writes
one checkpoint (atomically) and resumes exactly: an environment is restored by resetting it from the
generator state of its episode's start and replaying the episode's actions (environments are
deterministic given both), so a checkpoint can be taken at any step.

Environments are one gymnasium environment per member stepped in a Python loop (as
``gymnasium.vector.SyncVectorEnv`` does), reset by hand when an episode ends, which keeps every
member's reset points and generator use those of its single run.
"""

from __future__ import annotations

import copy
import logging
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from alrao_rl import AlraoModel, AlraoStep, PopArt, RunningVariance
from alrao_rl.checkpoint import CheckpointError, check_compatible, load_checkpoint, save_checkpoint, stop_requests
from envs import make_env

from . import replay_buffer
from .dqn import (
    ALRAO_OPTIMIZERS,
    COMPATIBLE_KEYS,
    DQNAgent,
    DQNConfig,
    _config_state,
    _Progress,
    _summary,
    linear_schedule,
    td_target,
    write_run_outputs,
)
from .stacked import StackedLinear, load_mlp, stacked_mlp

__all__ = ["PopulationBuffer", "PopulationDQN", "StackedLinear", "member_key"]

logger = logging.getLogger(__name__)

MEMBER_FIELDS = ("seed", "method", "lr")
"""The fields in which the members of a population may differ."""
POPULATION_METHODS = ("alrao", "sgd", "adam")
"""The methods a member may have (AdaQN, ``K`` networks and a selection of its own, trains alone)."""
_STATE_VERSION = 1


def member_key(config: DQNConfig) -> tuple:
    """What members of one population share: every field of the config but ``seed``, ``method`` and
    ``lr`` (and the checkpoint interval, which does not change the run)."""
    state = _config_state(config)
    return tuple((k, repr(v)) for k, v in sorted(state.items()) if k not in (*MEMBER_FIELDS, "checkpoint_every"))


# --- groups: the members of one method --------------------------------------------------------------


class _Group:
    """The members of one method: online and target networks with members, and their update."""

    method: str

    def __init__(self, members: list[int], agents: list[DQNAgent], configs: list[DQNConfig]) -> None:
        self.members = members
        self.slots = slice(0, len(members))  # its rows in the population's slot order (set by the population)
        self.configs = configs
        self.tau = configs[0].tau
        self.gamma = configs[0].gamma

    def q_values(self, obs: Tensor) -> Tensor:
        """``Q(s, .)`` ``[P, B, A]`` of the online networks for ``obs`` ``[P, B, obs]``."""
        raise NotImplementedError

    def train_step(self, obs: Tensor, actions: Tensor, rewards: Tensor, next_obs: Tensor,
                   terminated: Tensor) -> np.ndarray:
        """One DQN step for every member on its minibatch ``[P, B, ...]``; the ``[P]`` losses."""
        raise NotImplementedError

    def _soft_update(self) -> None:
        torch._foreach_lerp_(self._target_params, self._online_params, self.tau)

    def state_dict(self) -> dict[str, Any]:
        raise NotImplementedError

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise NotImplementedError


class _AlraoGroup(_Group):
    """Alrao members: an :class:`alrao_rl.AlraoModel` with members trained by :class:`alrao_rl.AlraoStep`."""

    method = "alrao"

    def __init__(self, members: list[int], agents: list[DQNAgent], configs: list[DQNConfig]) -> None:
        super().__init__(members, agents, configs)
        p, c0 = len(members), configs[0]
        h1, h2 = c0.hidden
        obs_dim = agents[0].q_net.body[0].in_features
        n_actions = agents[0].q_net.heads.out_features
        body = stacked_mlp([obs_dim, h1, h2], p, activate_last=True)
        self.online = AlraoModel(body, nn.Linear(h2, n_actions), c0.heads, "regression", averaging=c0.averaging,
                                 head_step=c0.head_step, members=p)
        self.optimizer = ALRAO_OPTIMIZERS[c0.alrao_optimizer](self.online, eta_min=c0.eta_min, eta_max=c0.eta_max,
                                                              seed=0, max_weight=c0.max_weight)
        with torch.no_grad():
            for k, agent in enumerate(agents):
                load_mlp(self.online.body, k, agent.q_net.body)
                self.online.heads.weight[k] = agent.q_net.heads.weight
                self.online.heads.bias[k] = agent.q_net.heads.bias
                # the member's own per-unit rates (sampled with its seed), times its lr multiplier
                single = [agent.optimizer.state[q]["alrao_rate"] for q in agent.q_net.parameters()]
                lr = configs[k].effective_lr
                for q, rate in zip(self.online.parameters(), single, strict=True):
                    target = self.optimizer.state[q]["alrao_rate"]
                    target[k] = (rate * lr).expand_as(target[k]) if lr != 1.0 else rate.expand_as(target[k])
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self._online_params = list(self.online.parameters())
        self._target_params = list(self.target.parameters())
        self.step = AlraoStep(self.online, self.optimizer)
        self.variance: RunningVariance | float = RunningVariance(members=p) if c0.td_variance != "unit" else 1.0
        self.variances: dict[str, Any] = {"variance": self.variance}
        if c0.td_variance == "switch":
            self.variances = {"variance": 1.0, "switch_variance": self.variance}
        self.popart = PopArt(members=p) if c0.value_norm == "popart" else None

    def q_values(self, obs: Tensor) -> Tensor:
        q = self.online.predict(obs)
        return q if self.popart is None else self.popart.denormalize(q)

    def train_step(self, obs: Tensor, actions: Tensor, rewards: Tensor, next_obs: Tensor,
                   terminated: Tensor) -> np.ndarray:
        next_q = self.target.predict(next_obs, switch=self.online.switch)
        if self.popart is not None:
            next_q = self.popart.denormalize(next_q)
        y = td_target(rewards, terminated, next_q.amax(dim=2), self.gamma)
        if self.popart is not None:
            y = self.popart.update(y, (self.online.heads, self.target.heads))
        result = self.step(obs, y, index=actions, **self.variances)
        self._soft_update()
        return np.asarray(result.loss)

    def log(self, writer: Any, j: int, step: int) -> None:
        """Member ``j``'s averaging weights (``alrao/posterior/head_{h}``), heads' variance and frozen
        units, as a single run logs them."""
        log_a = self.online.averaging_log_weights()[j]
        for h, a_h in enumerate(log_a.exp().tolist()):
            writer.add_scalar(f"alrao/posterior/head_{h}", a_h, step)
        variance = self.td_variances()[j]
        if variance is not None:
            writer.add_scalar("alrao/heads_variance", variance, step)
        frozen = sum(int((s["alrao_rate"][j] == 0).sum()) for s in self.optimizer.state.values())
        writer.add_scalar("alrao/frozen_units", frozen, step)

    def td_variances(self) -> list[float | None]:
        if isinstance(self.variance, RunningVariance):
            return [None if math.isnan(v) else float(v) for v in self.variance.values]
        return [self.variance] * len(self.members)

    def state_dict(self) -> dict[str, Any]:
        return {
            "online": self.online.state_dict(),
            "target": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "variance": self.variance.state_dict() if isinstance(self.variance, RunningVariance) else None,
            **({} if self.popart is None else {"popart": self.popart.state_dict()}),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        if isinstance(self.variance, RunningVariance):
            self.variance.load_state_dict(state["variance"])
        if self.popart is not None:
            self.popart.load_state_dict(state["popart"])


class _PlainGroup(_Group):
    """SGD and Adam members: a plain MLP with members, the Huber TD loss, one learning rate per member
    (``torch.optim.SGD`` / ``torch.optim.Adam`` with their defaults, member by member). SGD members
    come first, so that each method updates a contiguous slice of the stacked weights."""

    method = "plain"

    def __init__(self, members: list[int], agents: list[DQNAgent], configs: list[DQNConfig]) -> None:
        super().__init__(members, agents, configs)
        p, (h1, h2) = len(members), configs[0].hidden
        linears = [m for m in agents[0].q_net.modules() if isinstance(m, nn.Linear)]
        obs_dim, n_actions = linears[0].in_features, linears[-1].out_features
        self.online = stacked_mlp([obs_dim, h1, h2, n_actions], p, activate_last=False)
        for k, agent in enumerate(agents):
            load_mlp(self.online, k, agent.q_net)
        self.target = copy.deepcopy(self.online).requires_grad_(False)
        self._online_params = list(self.online.parameters())
        self._target_params = list(self.target.parameters())
        self.n_sgd = sum(c.method == "sgd" for c in configs)
        if any(c.method == "sgd" for c in configs[self.n_sgd:]):
            raise ValueError("SGD members must come before Adam members")
        lrs = torch.tensor([c.effective_lr for c in configs], dtype=torch.float64)  # (the Python floats)
        self._lrs = [lrs.view(-1, *[1] * (q.dim() - 1)) for q in self._online_params]
        self.adam_state: dict[str, Any] | None = None
        if self.n_sgd < p:
            self.adam_state = {
                "step": 0,
                "exp_avg": [torch.zeros_like(q[self.n_sgd:]) for q in self._online_params],
                "exp_avg_sq": [torch.zeros_like(q[self.n_sgd:]) for q in self._online_params],
            }

    def q_values(self, obs: Tensor) -> Tensor:
        return self.online(obs)

    def train_step(self, obs: Tensor, actions: Tensor, rewards: Tensor, next_obs: Tensor,
                   terminated: Tensor) -> np.ndarray:
        with torch.no_grad():
            y = td_target(rewards, terminated, self.target(next_obs).amax(dim=2), self.gamma)
        q = self.online(obs).gather(2, actions.unsqueeze(2)).squeeze(2)
        losses = nn.functional.smooth_l1_loss(q, y, reduction="none").mean(dim=1)
        grads = torch.autograd.grad(losses.sum(), self._online_params)
        with torch.no_grad():
            s = self.n_sgd
            if s:  # SGD: p <- p - lr g
                for param, grad, lr in zip(self._online_params, grads, self._lrs, strict=True):
                    param[:s].addcmul_(grad[:s], lr[:s].float(), value=-1.0)
            if self.adam_state is not None:
                self._adam([g[s:] for g in grads])
            self._soft_update()
        return losses.detach().numpy().astype(np.float64)

    def _adam(self, grads: list[Tensor]) -> None:
        """``torch.optim.Adam``'s single-tensor update (betas 0.9, 0.999; eps 1e-8) on the Adam members'
        slice, one lr per member, operation for operation (its ``addcdiv_(m, d, value=-s)`` computes
        ``p + (-s m) / d``)."""
        state, s = self.adam_state, self.n_sgd
        assert state is not None
        state["step"] += 1
        beta1, beta2, eps, step = 0.9, 0.999, 1e-8, float(state["step"])
        bias_correction1 = 1 - beta1**step
        bias_correction2_sqrt = (1 - beta2**step) ** 0.5
        for param, grad, m, v, lr in zip(self._online_params, grads, state["exp_avg"], state["exp_avg_sq"],
                                         self._lrs, strict=True):
            m.lerp_(grad, 1 - beta1)
            v.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
            denom = (v.sqrt() / bias_correction2_sqrt).add_(eps)
            step_size = (lr[s:] / bias_correction1).float()  # lr / bias_correction1 in float64, as torch's
            param[s:].add_((m * step_size.neg_()).div_(denom))

    def td_variances(self) -> list[float | None]:
        return [None] * len(self.members)

    def state_dict(self) -> dict[str, Any]:
        return {"online": self.online.state_dict(), "target": self.target.state_dict(), "adam": self.adam_state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.online.load_state_dict(state["online"])
        self.target.load_state_dict(state["target"])
        if self.adam_state is not None:
            saved = state["adam"]
            self.adam_state["step"] = int(saved["step"])
            for key in ("exp_avg", "exp_avg_sq"):
                for mine, theirs in zip(self.adam_state[key], saved[key], strict=True):
                    mine.copy_(theirs)


# --- replay --------------------------------------------------------------------------------------------


class PopulationBuffer:
    """One replay buffer per member, held as ``[M, capacity, ...]`` arrays filled in lockstep; each
    member samples with its own generator, seeded as its single run's :class:`agents.ReplayBuffer`.

    :param members: ``M``.
    :param obs_shape: one observation's shape.
    :param capacity: transitions per member.
    :param seeds: each member's sampling seed.
    """

    def __init__(self, members: int, obs_shape: tuple[int, ...], capacity: int, seeds: Sequence[int]) -> None:
        self.capacity = capacity
        self.observations = np.zeros((members, capacity, *obs_shape), dtype=np.float32)
        self.next_observations = np.zeros((members, capacity, *obs_shape), dtype=np.float32)
        self.actions = np.zeros((members, capacity), dtype=np.int64)
        self.rewards = np.zeros((members, capacity), dtype=np.float32)
        self.terminated = np.zeros((members, capacity), dtype=np.bool_)
        self.rngs = [np.random.default_rng(s) for s in seeds]
        self.pos = 0
        self.size = 0
        self._offsets = (np.arange(members) * capacity)[:, None]

    @staticmethod
    def nbytes_for(members: int, obs_shape: tuple[int, ...], capacity: int) -> int:
        """Bytes of the arrays of a buffer of this size (``members`` single buffers)."""
        return members * replay_buffer.ReplayBuffer.bytes_needed(obs_shape, capacity)

    def add(self, obs: np.ndarray, actions: np.ndarray, rewards: np.ndarray, next_obs: np.ndarray,
            terminated: np.ndarray) -> None:
        """Store one transition per member (``[M, ...]`` each)."""
        i = self.pos
        self.observations[:, i] = obs
        self.next_observations[:, i] = next_obs
        self.actions[:, i] = actions
        self.rewards[:, i] = rewards
        self.terminated[:, i] = terminated
        self.pos = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch_size: int, members: np.ndarray | None = None) -> tuple[Tensor, ...]:
        """``batch_size`` transitions per member (``[M, B, ...]`` torch tensors), each member with
        its own generator (as :meth:`agents.ReplayBuffer.sample`)."""
        integers, size = np.random.Generator.integers, self.size
        idx = np.stack([integers(rng, 0, size, size=batch_size) for rng in self.rngs])
        flat = (idx + self._offsets).ravel()  # row k, slot i -> k * capacity + i
        m = len(self.rngs)
        obs_shape = self.observations.shape[2:]
        return (
            torch.from_numpy(self.observations.reshape(-1, *obs_shape)[flat].reshape(m, batch_size, *obs_shape)),
            torch.from_numpy(self.actions.reshape(-1)[flat].reshape(m, batch_size)),
            torch.from_numpy(self.rewards.reshape(-1)[flat].reshape(m, batch_size)),
            torch.from_numpy(self.next_observations.reshape(-1, *obs_shape)[flat].reshape(m, batch_size, *obs_shape)),
            torch.from_numpy(self.terminated.reshape(-1)[flat].reshape(m, batch_size).astype(np.float32)),
        )

    def state_dict(self) -> dict[str, Any]:
        n = self.size
        return {
            "capacity": self.capacity,
            "pos": self.pos,
            "size": n,
            "rngs": [_plain(rng.bit_generator.state) for rng in self.rngs],
            **{name: torch.from_numpy(getattr(self, name)[:, :n].copy()) for name in _FIELDS},
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a saved buffer, also into a larger one (a run resumed with more steps: its buffer
        held every transition of the shorter run, so the next ones follow them)."""
        n, capacity = int(state["size"]), int(state["capacity"])
        if n > self.capacity or (capacity != self.capacity and n == capacity and int(state["pos"]) != 0):
            raise ValueError(f"a buffer of {n} transitions (capacity {capacity}) does not fit in {self.capacity}")
        for name in _FIELDS:
            getattr(self, name)[:, :n] = state[name].numpy()
        self.pos = int(state["pos"]) if capacity == self.capacity else n % self.capacity
        self.size = n
        for rng, saved in zip(self.rngs, state["rngs"], strict=True):
            rng.bit_generator.state = saved


_FIELDS = ("observations", "next_observations", "actions", "rewards", "terminated")


def _plain(value: Any) -> Any:
    """A generator state as plain Python values (loadable with ``weights_only=True``)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


# --- the population -------------------------------------------------------------------------------------


@dataclass
class _MemberProgress(_Progress):
    """A member's counters (those of a single run), its current episode's return, and what restores
    its environment: the generator state before the episode's reset and the actions taken since."""

    episode_return: float = 0.0
    episode_rng: dict[str, Any] | None = None
    episode_actions: list[int] = field(default_factory=list)


class PopulationDQN:
    """``M`` DQN runs trained in lockstep in one process (module docstring).

    :param configs: one :class:`agents.dqn.DQNConfig` per member, identical but for ``seed``,
        ``method`` (one of :data:`POPULATION_METHODS`) and ``lr``.
    :raises ValueError: if a member's method is not one of :data:`POPULATION_METHODS`, members differ in
        anything else, or the replay buffers would not fit in memory (the message names ``--buffer-size``).
    """

    def __init__(self, configs: Sequence[DQNConfig]) -> None:
        configs = list(configs)
        if not configs:
            raise ValueError("a population needs at least one member")
        for config in configs:
            if not isinstance(config, DQNConfig):
                raise TypeError(f"members must be DQNConfig, got {type(config).__name__}")
            if config.method not in POPULATION_METHODS:
                raise ValueError(f"method {config.method!r} cannot train as a population (only "
                                 f"{', '.join(POPULATION_METHODS)} can): train each seed alone")
        key = member_key(configs[0])
        for config in configs[1:]:
            if member_key(config) != key:
                theirs, mine = dict(member_key(config)), dict(key)
                diff = sorted(k for k in mine if mine[k] != theirs.get(k))
                raise ValueError(
                    f"population members may differ only in {', '.join(MEMBER_FIELDS)}; member "
                    f"{configs.index(config)} differs in {', '.join(diff)}"
                )
        self.configs = configs
        c0 = configs[0]
        self.capacity = min(c0.buffer_size, c0.total_steps)
        probe = make_env(c0.env, n_bins=c0.n_bins)
        self.obs_shape = probe.observation_space.shape
        self.n_actions = int(probe.action_space.n)
        probe.close()
        self.memory_bytes = PopulationBuffer.nbytes_for(len(configs), self.obs_shape, self.capacity)
        available = replay_buffer.available_memory()
        if available is not None and self.memory_bytes > 0.8 * available:
            raise ValueError(
                f"the population's replay buffers need {self.memory_bytes / 2**30:.2f} GiB ({len(configs)} members x "
                f"{self.capacity} transitions) but only {available / 2**30:.2f} GiB are available: lower "
                f"--buffer-size (or --total-steps), or split the members over more processes"
            )
        logger.info("population of %d members: replay buffers %.1f MiB", len(configs), self.memory_bytes / 2**20)
        obs_dim = int(np.prod(self.obs_shape))
        agents = [DQNAgent(obs_dim, self.n_actions, c) for c in configs]
        self.groups: list[_Group] = []
        alrao = [k for k, c in enumerate(configs) if c.method == "alrao"]
        plain = [k for k, c in enumerate(configs) if c.method == "sgd"] + [
            k for k, c in enumerate(configs) if c.method == "adam"]
        for cls, members in ((_AlraoGroup, alrao), (_PlainGroup, plain)):
            if members:
                self.groups.append(cls(members, [agents[k] for k in members], [configs[k] for k in members]))
        # Slot order: each group's members side by side, so that a group reads its rows of a batch as a view
        self.order = np.array([k for g in self.groups for k in g.members])
        start = 0
        for group in self.groups:
            group.slots = slice(start, start + len(group.members))
            start = group.slots.stop

    @property
    def members(self) -> int:
        return len(self.configs)

    def train(
        self,
        logdirs: Sequence[str] | None = None,
        checkpoint_dir: str | None = None,
        *,
        resume: bool = False,
        progress: bool = True,
        on_update: Callable[[int, PopulationDQN, tuple[Tensor, ...]], None] | None = None,
    ) -> list[dict[str, Any]]:
        """Train every member; return their summaries (as :func:`agents.dqn.train` returns one).

        :param logdirs: one output folder per member (None: nothing written per member).
        :param checkpoint_dir: folder of the population's ``checkpoint.pt`` (None: no checkpoints).
        :param resume: continue from ``checkpoint_dir/checkpoint.pt`` (same members required).
        :param progress: show a progress bar.
        :param on_update: called as ``on_update(step, population, batch)`` after every gradient step of
            the population (``batch``: the ``[M, B, ...]`` minibatch it trained on, its rows in slot
            order: group ``g`` reads ``batch[i][g.slots]``), e.g. to record diagnostics
            (:class:`agents.probe.HeadProbe`).
        """
        from torch.utils.tensorboard import SummaryWriter
        from tqdm import tqdm

        configs, c0, m = self.configs, self.configs[0], self.members
        if logdirs is not None and len(logdirs) != m:
            raise ValueError(f"logdirs must have one folder per member ({m}), got {len(logdirs)}")
        envs = [make_env(c.env, c.seed, n_bins=c.n_bins) for c in configs]
        eval_envs = [make_env(c.env, c.seed, n_bins=c.n_bins) for c in configs]
        order = self.order
        buffer = PopulationBuffer(m, self.obs_shape, self.capacity, [configs[k].seed for k in order])  # slot order
        rngs = [np.random.default_rng(c.seed) for c in configs]
        states = [_MemberProgress() for _ in configs]
        obs = np.zeros((m, *self.obs_shape), dtype=np.float32)
        for k, (env, config) in enumerate(zip(envs, configs, strict=True)):
            obs[k], _ = env.reset(seed=config.seed)
        ckpt_path = os.path.join(checkpoint_dir, "checkpoint.pt") if checkpoint_dir else None
        if resume:
            obs = self._resume(ckpt_path, envs, buffer, rngs, states)
        if ckpt_path is not None:
            os.makedirs(checkpoint_dir, exist_ok=True)  # type: ignore[arg-type]

        writers = [SummaryWriter(d) for d in logdirs] if logdirs is not None else None
        eval_seeds = [[1_000_000 + 1000 * c.seed + k for k in range(c.eval_episodes)] for c in configs]

        def checkpoint() -> None:
            if ckpt_path is None:
                return
            save_checkpoint(ckpt_path, {
                "version": _STATE_VERSION,
                "configs": [_config_state(c) for c in configs],
                "groups": [g.state_dict() for g in self.groups],
                "buffer": buffer.state_dict(),
                "rngs": [_plain(r.bit_generator.state) for r in rngs],
                "progress": [asdict(s) for s in states],
            })

        step = states[0].step
        session_start, previous_seconds = time.perf_counter(), states[0].wall_seconds
        last_checkpoint = step
        bar = tqdm(total=c0.total_steps, initial=step, disable=not progress, unit="step", dynamic_ncols=True,
                   desc=f"population of {m} {c0.env}")
        actions = np.zeros(m, dtype=np.int64)
        rewards = np.zeros(m, dtype=np.float32)
        terminated = np.zeros(m, dtype=np.bool_)
        done = np.zeros(m, dtype=np.bool_)
        next_obs = np.zeros_like(obs)
        with stop_requests("step") as stop:
            while step < c0.total_steps and not stop["stop"]:
                # act: epsilon-greedy, each member with its own generator
                epsilon = linear_schedule(c0.eps_start, c0.eps_end, c0.exploration_steps, step)
                explore = [rng.random() < epsilon for rng in rngs]
                greedy = None
                for k, rng in enumerate(rngs):
                    if explore[k]:
                        actions[k] = rng.integers(self.n_actions)
                    else:
                        if greedy is None:
                            greedy = self._greedy(obs)
                        actions[k] = greedy[k]
                # store
                for k, env in enumerate(envs):
                    next_obs[k], reward, term, trunc, _ = env.step(int(actions[k]))
                    rewards[k], terminated[k], done[k] = reward, term, term or trunc
                    states[k].episode_actions.append(int(actions[k]))
                    states[k].episode_return += float(reward)
                buffer.add(obs[order], actions[order], rewards[order], next_obs[order], terminated[order])
                obs[:] = next_obs
                step += 1
                for s in states:
                    s.step = step
                # learn
                if step > c0.learning_starts and step % c0.train_freq == 0:
                    batch = buffer.sample(c0.batch_size)
                    for group in self.groups:
                        losses = group.train_step(*(t[group.slots] for t in batch))
                        for j, k in enumerate(group.members):
                            states[k].updates += 1
                            if writers is not None and states[k].updates % 100 == 0:
                                writers[k].add_scalar("train/loss", float(losses[j]), step)
                                writers[k].add_scalar("train/epsilon", epsilon, step)
                                if isinstance(group, _AlraoGroup):
                                    group.log(writers[k], j, step)
                    if on_update is not None:
                        on_update(step, self, batch)
                # evaluate
                if step % c0.eval_every == 0 or step == c0.total_steps:
                    results = self._evaluate(eval_envs, eval_seeds)
                    for k, (mean, std) in enumerate(results):
                        states[k].evals.append([step, mean, std])
                        if writers is not None:
                            writers[k].add_scalar("eval/return_mean", mean, step)
                # episode ends
                for k in np.flatnonzero(done):
                    s = states[k]
                    s.episodes += 1
                    s.last_return, s.episode_return = s.episode_return, 0.0
                    if writers is not None:
                        writers[k].add_scalar("train/episode_return", s.last_return, step)
                    s.episode_rng = _plain(envs[k].unwrapped.np_random.bit_generator.state)
                    s.episode_actions = []
                    obs[k], _ = envs[k].reset()
                elapsed = previous_seconds + time.perf_counter() - session_start
                for s in states:
                    s.wall_seconds = elapsed
                if step - last_checkpoint >= c0.checkpoint_every or stop["stop"]:
                    checkpoint()
                    last_checkpoint = step
                bar.update(1)
        bar.close()
        interrupted = step < c0.total_steps
        if not interrupted or last_checkpoint != step:
            checkpoint()
        if interrupted and ckpt_path is not None:
            logger.warning("stopped at step %d; continue with --resume", step)
        if writers is not None:
            for w in writers:
                w.close()
        variances = [None] * m
        for group in self.groups:
            for j, k in enumerate(group.members):
                variances[k] = group.td_variances()[j]
        summaries = []
        for k, (config, s) in enumerate(zip(configs, states, strict=True)):
            sps = s.step / max(s.wall_seconds, 1e-9)
            summary = _summary(config, s, sps, interrupted, variances[k])
            summary["population"] = m
            if logdirs is not None:
                write_run_outputs(logdirs[k], s.evals, summary)
                # the member's final policy in its single run's checkpoint layout (alrao-evaluate reads it);
                # resuming goes through the population's own checkpoint
                save_checkpoint(os.path.join(logdirs[k], "checkpoint.pt"), {
                    "config": _config_state(config), "agent": self.member_agent(k).state_dict(),
                    "progress": {"step": s.step, "episodes": s.episodes, "updates": s.updates}, "population": m,
                })
            summaries.append(summary)
        for env in (*envs, *eval_envs):
            env.close()
        return summaries

    @torch.no_grad()
    def member_agent(self, k: int) -> DQNAgent:
        """Member ``k`` as the :class:`agents.dqn.DQNAgent` of its single run, with its current weights,
        rates, switch and heads' variance (its greedy actions are the member's, bit for bit)."""
        config = self.configs[k]
        agent = DQNAgent(int(np.prod(self.obs_shape)), self.n_actions, config)
        group = next(g for g in self.groups if k in g.members)
        j = group.members.index(k)
        for stacked, single in ((group.online, agent.q_net), (group.target, agent.target_net)):
            names = iter(single.state_dict())
            state = {}
            for name, value in stacked.state_dict().items():
                if "switch" in name and stacked is group.target:
                    value = group.online.state_dict()[name]  # the target's switch is not used
                state[next(names)] = value[j].clone()
            single.load_state_dict(state)
        if isinstance(group, _AlraoGroup):  # its own rates (as sampled), with the units frozen since
            for q, stacked_q in zip(agent.q_net.parameters(), group.online.parameters(), strict=True):
                frozen = group.optimizer.state[stacked_q]["alrao_rate"][j] == 0
                rate = agent.optimizer.state[q]["alrao_rate"]
                rate.masked_fill_(frozen.view_as(rate), 0.0)
            value = group.td_variances()[j]
            agent.variance = RunningVariance(value=value) if isinstance(group.variance, RunningVariance) else 1.0
            if group.popart is not None and agent.popart is not None:
                agent.popart.load_state_dict({name: [v[j]] for name, v in group.popart.state_dict().items()})
        return agent

    def test(self, seeds: Sequence[Sequence[int]]) -> list[tuple[float, float, int, bool]]:
        """Every member's current greedy policy on fresh environments, one episode per seed: the mean
        and standard deviation of the returns, the number of distinct actions taken, and whether the
        Q-values at the episodes' first observations are finite."""
        envs = [make_env(c.env, c.seed, n_bins=c.n_bins) for c in self.configs]
        try:
            actions: list[set[int]] = [set() for _ in self.configs]
            returns = self._evaluate(envs, [list(s) for s in seeds], actions)
            first = np.zeros((self.members, max(len(s) for s in seeds), *self.obs_shape), dtype=np.float32)
            for k, (env, member_seeds) in enumerate(zip(envs, seeds, strict=True)):
                for i, seed in enumerate(member_seeds):
                    first[k, i], _ = env.reset(seed=seed)
            finite = torch.isfinite(self._q_values(torch.from_numpy(first))).flatten(1).all(dim=1).tolist()
        finally:
            for env in envs:
                env.close()
        return [(mean, std, len(a), f) for (mean, std), a, f in zip(returns, actions, finite, strict=True)]

    # --- pieces -------------------------------------------------------------------------------------

    @torch.no_grad()
    def _q_values(self, obs: Tensor) -> Tensor:
        """``Q(s, .)`` of every member for ``obs`` ``[M, B, obs]`` (member order): ``[M, B, A]``."""
        q = torch.empty(self.members, obs.shape[1], self.n_actions)
        in_slots = obs[torch.from_numpy(self.order)]
        for group in self.groups:
            q[group.slots] = group.q_values(in_slots[group.slots])
        out = torch.empty_like(q)
        out[torch.from_numpy(self.order)] = q
        return out

    def _greedy(self, obs: np.ndarray) -> np.ndarray:
        """Every member's greedy action for its observation ``obs[k]``."""
        q = self._q_values(torch.from_numpy(obs).unsqueeze(1))
        return q[:, 0].argmax(dim=1).numpy()

    def _evaluate(
        self, envs: list[Any], seeds: list[list[int]], actions_taken: list[set[int]] | None = None
    ) -> list[tuple[float, float]]:
        """Greedy episodes of every member on its evaluation env, one per seed, in lockstep (as
        :func:`agents.dqn.evaluate` for each member): mean and standard deviation of the returns
        (and the actions taken, into ``actions_taken``)."""
        m = self.members
        episode = [0] * m
        returns: list[list[float]] = [[] for _ in range(m)]
        total = [0.0] * m
        obs = np.zeros((m, *self.obs_shape), dtype=np.float32)
        active = [bool(seeds[k]) for k in range(m)]
        for k in range(m):
            if active[k]:
                obs[k], _ = envs[k].reset(seed=seeds[k][0])
        while any(active):
            actions = self._greedy(obs)
            for k in range(m):
                if not active[k]:
                    continue
                obs[k], reward, terminated, truncated, _ = envs[k].step(int(actions[k]))
                if actions_taken is not None:
                    actions_taken[k].add(int(actions[k]))
                total[k] += float(reward)
                if terminated or truncated:
                    returns[k].append(total[k])
                    total[k] = 0.0
                    episode[k] += 1
                    if episode[k] < len(seeds[k]):
                        obs[k], _ = envs[k].reset(seed=seeds[k][episode[k]])
                    else:
                        active[k] = False
        return [(float(np.mean(r)), float(np.std(r))) for r in returns]

    def _resume(
        self, ckpt_path: str | None, envs: list[Any], buffer: PopulationBuffer, rngs: list[np.random.Generator],
        states: list[_MemberProgress],
    ) -> np.ndarray:
        """Restore everything from the checkpoint; environments by replaying their episode (module
        docstring). Returns the members' current observations."""
        if ckpt_path is None or not os.path.exists(ckpt_path):
            raise FileNotFoundError(f"--resume: no checkpoint at {ckpt_path}")
        saved = load_checkpoint(ckpt_path)
        try:
            if saved.get("version") != _STATE_VERSION:
                raise CheckpointError(f"{ckpt_path!r} is not a population checkpoint of version {_STATE_VERSION}")
            if len(saved["configs"]) != self.members:
                raise CheckpointError(f"{ckpt_path!r} holds {len(saved['configs'])} members, not {self.members}")
            for old, config in zip(saved["configs"], self.configs, strict=True):
                check_compatible(old, _config_state(config), COMPATIBLE_KEYS)
            for group, state in zip(self.groups, saved["groups"], strict=True):
                group.load_state_dict(state)
            buffer.load_state_dict(saved["buffer"])
            for rng, state in zip(rngs, saved["rngs"], strict=True):
                rng.bit_generator.state = state
            names = {f.name for f in fields(_MemberProgress)}
            for k, progress in enumerate(saved["progress"]):
                states[k] = _MemberProgress(**{key: v for key, v in progress.items() if key in names})
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"{ckpt_path!r} is a malformed checkpoint: {type(e).__name__}: {e}") from e
        obs = np.zeros((self.members, *self.obs_shape), dtype=np.float32)
        for k, (env, config, s) in enumerate(zip(envs, self.configs, states, strict=True)):
            if s.episode_rng is None:  # still in the first episode
                obs[k], _ = env.reset(seed=config.seed)
            else:
                env.unwrapped.np_random.bit_generator.state = s.episode_rng
                obs[k], _ = env.reset()
            for action in s.episode_actions:
                obs[k], *_ = env.step(action)
        return obs


def split_members(configs: Sequence[DQNConfig]) -> list[list[int]]:
    """Indices of ``configs`` grouped into populations (members sharing :func:`member_key`)."""
    groups: dict[tuple, list[int]] = {}
    for i, config in enumerate(configs):
        groups.setdefault(member_key(config), []).append(i)
    return list(groups.values())


def member_configs(base: DQNConfig, seeds: Sequence[int]) -> list[DQNConfig]:
    """``base`` with each of ``seeds``."""
    return [replace(base, seed=s) for s in seeds]
