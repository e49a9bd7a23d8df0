"""AdaQN: several online Q-networks with different learning rates and one target, taken from the best of them.

Vincent, Wahren, Peters, Belousov and D'Eramo, "Adaptive Q-Network: On-the-fly Target Selection for
Deep Reinforcement Learning" (ICLR 2025, arXiv 2405.16195) train ``K`` online Q-networks with
different hyperparameters on the same minibatches against one shared target network; at each target
update the target is taken from the online network whose TD loss, accumulated since the previous
target update, is the smallest. Here the hyperparameter is Adam's learning rate: ``K`` copies of the
DQN's MLP, each with its own ``torch.optim.Adam`` at a rate ``eta_k`` of a log grid
(default ``{1e-5, 1e-4, 1e-3, 1e-2}``), each initialised by its own seeded generator. It is the
closest rival of Alrao in RL: both train at many learning rates at once and let the data choose,
AdaQN with ``K`` whole networks, Alrao with one network whose units have different rates.

**The paper's algorithm** (hard target updates every ``T`` gradient steps)::

    y = r + gamma (1 - d) max_a' Qbar(s', a')              # one TD target, shared by the K networks
    L_k = mean over the minibatch of Huber(Q_k(s, a) - y)  # for every k, before its step
    theta_k <- Adam(theta_k, grad L_k) at rate eta_k         # every network, its own Adam
    S_k <- S_k + L_k                                         # loss accumulated since the last target update
    every T steps:  s = argmin_k S_k;  thetabar <- theta_s;  S <- 0

**With soft target updates** (this project's DQN: ``thetabar <- (1 - tau) thetabar + tau theta`` after
every gradient step), the selection is made every ``W`` gradient steps (``adaqn_window``) on the losses
accumulated over those ``W`` steps, and between selections the target is Polyak-averaged towards the
selected network, and only it::

    S_k <- S_k + L_k;  n <- n + 1
    if n = W:  s = argmin_k S_k (over the finite S_k; s unchanged when none is);  S <- 0;  n <- 0
    thetabar <- (1 - tau) thetabar + tau theta_s             # every gradient step

Over a window the target moves a fraction ``1 - (1 - tau)^W`` of the way to the selected network:
with ``tau = 0.01`` and the default ``W = 100 = 1 / tau`` (the target's time constant), 63%. A hard
update replaces the whole target every ``T`` steps; this replaces most of it every ``W``, smoothly. The
target starts as a copy of network 0, the first selection, as in the authors' code; a network whose
accumulated loss is not finite (diverged) is never selected.

**Acting** (the authors' code): when epsilon-greedy does not explore, the greedy action is taken by
the selected network, except that with probability ``epsilon_b(t)`` it is taken by a network drawn
uniformly among the ``K``; ``epsilon_b`` decays linearly from 1 to 0.01 over the run's ``total_steps``
(a run resumed with a larger ``total_steps`` stretches the rest of the schedule). Evaluation and the
final policy are greedy with the selected network.

    >>> adaqn = AdaQN(lambda: torch.nn.Linear(4, 2), rates=(1e-4, 1e-3), seed=0, window=100, tau=0.01,
    ...               gamma=0.99, total_steps=10_000)
    >>> adaqn.selected
    0
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from .dqn import linear_schedule, soft_update, td_target
from .replay_buffer import TorchReplayBatch

__all__ = ["MEMBER_EPS_END", "AdaQN", "AdaQNetwork", "member_epsilon", "member_seed", "select_member"]

MEMBER_EPS_END = 0.01
"""Final probability that a uniformly drawn network acts instead of the selected one (the authors' code)."""


def select_member(window_loss: Tensor, current: int) -> int:
    """``argmin_k S_k`` over the finite accumulated losses (the first on ties); ``current`` if none is finite.

    :param window_loss: ``S``, ``[K]``: each network's TD loss summed over the window.
    :param current: the network selected so far.
    """
    finite = torch.isfinite(window_loss)
    if not bool(finite.any()):
        return current
    return int(torch.where(finite, window_loss, torch.inf).argmin())


def member_epsilon(step: int, total_steps: int) -> float:
    """``epsilon_b(t)``: the probability that a uniformly drawn network acts, ``1 -> 0.01`` linearly over the run."""
    return linear_schedule(1.0, MEMBER_EPS_END, total_steps, step)


def member_seed(seed: int, k: int) -> int:
    """The seed of network ``k``'s initial weights: a stream of its own (``numpy.random.SeedSequence`` with
    ``spawn_key (0, k)``), so that network ``k`` starts the same whatever ``K``."""
    return int(np.random.SeedSequence(seed, spawn_key=(0, k)).generate_state(1, np.uint64)[0])


class AdaQNetwork(nn.Module):
    """The ``K`` online networks and the selection state, as buffers (so that ``state_dict`` holds them).

    ``forward`` is the selected network's: ``Q(s, .) = Q_s(s, .)``.

    :param members: the ``K`` online networks (same architecture).
    """

    selected: Tensor
    window_loss: Tensor
    window_steps: Tensor
    selections: Tensor

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        if not members:
            raise ValueError("AdaQN needs at least one online network")
        self.members = nn.ModuleList(members)
        k = len(members)
        self.register_buffer("selected", torch.tensor(0))  # s: the network the target follows, which acts
        self.register_buffer("window_loss", torch.zeros(k, dtype=torch.float64))  # S_k (float64: a long sum)
        self.register_buffer("window_steps", torch.tensor(0))  # n: gradient steps since the last selection
        self.register_buffer("selections", torch.zeros(k, dtype=torch.long))  # selections each network won

    def forward(self, obs: Tensor) -> Tensor:
        return self.members[int(self.selected)](obs)

    @torch.no_grad()
    def record(self, losses: Tensor, window: int) -> bool:
        """Add one gradient step's losses ``L_k`` to ``S_k``; after ``window`` steps select ``s = argmin_k S_k``
        (:func:`select_member`) and start a new window.

        :param losses: ``[K]`` TD losses of this step.
        :param window: ``W``, gradient steps per selection.
        :return: whether a selection was made.
        """
        self.window_loss += losses.detach().to(torch.float64)
        self.window_steps += 1
        if int(self.window_steps) < window:
            return False
        s = select_member(self.window_loss, int(self.selected))
        self.selected.fill_(s)
        self.selections[s] += 1
        self.window_loss.zero_()
        self.window_steps.zero_()
        return True


class AdaQN:
    """AdaQN's networks, optimizer, target and update (module docstring for the maths).

    :param make_member: builds one online network (called ``K`` times, each under its own seed).
    :param rates: Adam's learning rate of each network, ``eta_1..eta_K``.
    :param seed: the run's seed: network ``k`` is initialised with :func:`member_seed` ``(seed, k)``; the
        draws of the acting network use a generator of their own.
    :param window: ``W``, gradient steps between two selections.
    :param tau: soft target update rate.
    :param gamma: discount factor.
    :param total_steps: the environment steps of the run (the horizon of ``epsilon_b``).
    """

    def __init__(
        self,
        make_member: Callable[[], nn.Module],
        rates: Sequence[float],
        *,
        seed: int,
        window: int,
        tau: float,
        gamma: float,
        total_steps: int,
    ) -> None:
        self.rates = tuple(float(r) for r in rates)
        members = []
        for k in range(len(self.rates)):
            with torch.random.fork_rng(devices=[]):  # the global generator is left as it was
                torch.manual_seed(member_seed(seed, k))
                members.append(make_member())
        self.online = AdaQNetwork(members)
        self.target = copy.deepcopy(members[0]).requires_grad_(False)  # s = 0 until the first selection
        groups = [{"params": m.parameters(), "lr": r} for m, r in zip(members, self.rates, strict=True)]
        self.optimizer = torch.optim.Adam(groups)  # one parameter group (its own rate and state) per network
        self.window, self.tau, self.gamma, self.total_steps = window, tau, gamma, total_steps
        self.rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(1,)))
        self._target_params = list(self.target.parameters())
        self._member_params = [list(m.parameters()) for m in members]

    @property
    def selected(self) -> int:
        """``s``: the selected network."""
        return int(self.online.selected)

    def behaviour_member(self, step: int) -> int:
        """The network whose greedy action the behaviour policy takes at environment step ``step``: one drawn
        uniformly with probability ``epsilon_b(step)``, else the selected one."""
        if self.rng.random() < member_epsilon(step, self.total_steps):
            return int(self.rng.integers(len(self.rates)))
        return self.selected

    def train_step(self, batch: TorchReplayBatch) -> Tensor:
        """One AdaQN step: shared TD target -> every network's Huber loss and Adam step -> accumulate the
        losses (and select at the end of a window) -> Polyak step of the target towards the selected network.

        :return: ``[K]`` each network's TD loss on the minibatch, before its step.
        """
        with torch.no_grad():
            next_q_max = self.target(batch.next_observations).max(dim=1).values
            y = td_target(batch.rewards, batch.terminated, next_q_max, self.gamma)
        actions = batch.actions.unsqueeze(1)
        losses = torch.stack([
            nn.functional.smooth_l1_loss(member(batch.observations).gather(1, actions).squeeze(1), y)
            for member in self.online.members
        ])
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()  # network k's gradient is that of its own L_k: the networks share no parameter
        self.optimizer.step()
        self.online.record(losses, self.window)
        soft_update(self._target_params, self._member_params[self.selected], self.tau)
        return losses.detach()

    def summary(self) -> dict[str, Any]:
        """What ``summary.json`` reports: the rates, the window, the selected network and its rate, how many
        selections each network won."""
        s = self.selected
        return {"rates": list(self.rates), "window": self.window, "selected": s, "selected_lr": self.rates[s],
                "selections": self.online.selections.tolist()}

    def state_dict(self) -> dict[str, Any]:
        """Everything a resumed run needs: the online networks with the selection state (under ``q_net``, the
        key a single network has in :meth:`agents.dqn.DQNAgent.state_dict`), the target, the ``K`` Adam states
        and the generator of the acting network's draws."""
        return {
            "q_net": self.online.state_dict(),
            "target_net": self.target.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "member_rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.online.load_state_dict(state["q_net"])
        self.target.load_state_dict(state["target_net"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.rng.bit_generator.state = state["member_rng"]
