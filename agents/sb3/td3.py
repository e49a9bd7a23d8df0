"""``AlraoTD3``: Stable-Baselines3's TD3 whose twin critics are Alrao models (no critic learning rate).

::

    from agents.sb3 import AlraoTD3

    model = AlraoTD3("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(net_arch=[400, 300]), seed=0)
    model.learn(20_000)

Each critic ``Q_k`` is an Alrao model (:mod:`agents.sb3.critic`) trained on TD3's clipped double-Q target

.. math::
   y = r + \\gamma (1 - d) \\min_k \\bar Q_k\\big(s', \\mathrm{clip}(\\bar\\mu(s') + \\epsilon, -1, 1)\\big),
   \\qquad \\epsilon = \\mathrm{clip}(\\mathcal N(0, \\sigma^2), -c, c),

(``bar Q_k``: the target critics, their heads averaged with the online critics' switch weights) by one fused
Alrao step per update; every ``policy_delay`` updates the actor maximizes ``Q_1(s, mu(s))`` (the first
critic's averaged output) by SB3's Adam at ``learning_rate`` (``actor_alrao=True``: per-unit Alrao rates), and
actor and critics' targets follow by Polyak averaging, as SB3's TD3.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import TD3
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.td3.policies import TD3Policy
from torch import nn

from alrao_rl import AlraoSGD

from .critic import AlraoContinuousCritic, AlraoCriticAlgorithm, AlraoCriticPolicy

__all__ = ["AlraoTD3", "AlraoTD3Policy"]


class AlraoTD3Policy(AlraoCriticPolicy, TD3Policy):
    """TD3 policy whose critics are Alrao models; only :class:`AlraoTD3` trains it. SB3's ``TD3Policy``
    arguments, and the Alrao ones of :class:`agents.sb3.AlraoSACPolicy` (``eta_min``, ``eta_max``,
    ``n_heads``, ``max_weight``, ``averaging``, ``alrao_seed``, ``head_step``, ``critic_optimizer_class``,
    ``actor_alrao``)."""

    critic: AlraoContinuousCritic  # type: ignore[assignment]
    critic_target: AlraoContinuousCritic  # type: ignore[assignment]
    _algorithm_name = "AlraoTD3"
    _base_name = "TD3"

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = th.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        n_critics: int = 2,
        share_features_extractor: bool = False,
        eta_min: float = 1e-5,
        eta_max: float = 10.0,
        n_heads: int = 10,
        max_weight: float | None = 100.0,
        averaging: str = "filtered",
        alrao_seed: int | None = None,
        head_step: str = "plain",
        critic_optimizer_class: type[th.optim.Optimizer] = AlraoSGD,
        actor_alrao: bool = False,
    ) -> None:
        self._alrao_setup(eta_min, eta_max, n_heads, max_weight, averaging, alrao_seed, head_step,
                          critic_optimizer_class, actor_alrao)
        super().__init__(
            observation_space, action_space, lr_schedule, net_arch, activation_fn, features_extractor_class,
            features_extractor_kwargs, normalize_images, optimizer_class, optimizer_kwargs, n_critics,
            share_features_extractor,
        )


class AlraoTD3(AlraoCriticAlgorithm, TD3):
    """SB3's TD3 whose critics are trained by Alrao (module docstring); ``AlraoTD3("MlpPolicy", env)`` uses
    :class:`AlraoTD3Policy`. Same arguments and defaults as :class:`stable_baselines3.TD3` (``learning_rate``
    is the actor's), and ``td_variance`` as :class:`agents.sb3.AlraoSAC`; same logged entries."""

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"MlpPolicy": AlraoTD3Policy}
    policy: AlraoTD3Policy  # type: ignore[assignment]
    critic: AlraoContinuousCritic  # type: ignore[assignment]
    critic_target: AlraoContinuousCritic  # type: ignore[assignment]
    _policy_base = AlraoTD3Policy

    def __init__(
        self,
        policy: str | type[AlraoTD3Policy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1e-3,
        buffer_size: int = 1_000_000,
        learning_starts: int = 100,
        batch_size: int = 256,
        tau: float = 0.005,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 1,
        gradient_steps: int = 1,
        action_noise: ActionNoise | None = None,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        policy_delay: int = 2,
        target_policy_noise: float = 0.2,
        target_noise_clip: float = 0.5,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        td_variance: str = "running",
    ) -> None:
        self._check_alrao(td_variance)
        super().__init__(
            policy, env, learning_rate, buffer_size, learning_starts, batch_size, tau, gamma, train_freq,
            gradient_steps, action_noise, replay_buffer_class, replay_buffer_kwargs, optimize_memory_usage, n_steps,
            policy_delay, target_policy_noise, target_noise_clip, stats_window_size, tensorboard_log, policy_kwargs,
            verbose, seed, device, _init_setup_model=False,
        )
        if _init_setup_model:
            self._setup_model()

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """``gradient_steps`` TD3 updates, SB3's in order, the critics' by one Alrao step each (module docstring).

        :param gradient_steps: number of gradient steps.
        :param batch_size: minibatch size.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self._plain_optimizers())
        trainer = self._critic_trainer()
        online_switch = self.critic.q_model.switch
        actor_losses, critic_losses = [], []
        for _ in range(gradient_steps):
            self._n_updates += 1
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
            with th.no_grad():
                noise = replay_data.actions.clone().data.normal_(0, self.target_policy_noise)
                noise = noise.clamp(-self.target_noise_clip, self.target_noise_clip)
                next_actions = (self.actor_target(replay_data.next_observations) + noise).clamp(-1, 1)
                next_q = th.cat(self.critic_target(replay_data.next_observations, next_actions, switch=online_switch),
                                dim=1)
                next_q = next_q.min(dim=1, keepdim=True).values
                target_q = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q

            result = trainer(replay_data.observations, replay_data.actions, target_q)
            critic_losses.append(float(np.mean(result.loss)))

            if self._n_updates % self.policy_delay == 0:
                actor_loss = -self.critic.q1_forward(replay_data.observations,
                                                     self.actor(replay_data.observations)).mean()
                actor_losses.append(actor_loss.item())
                self.actor.optimizer.zero_grad()
                actor_loss.backward()
                self.actor.optimizer.step()
                self.critic.optimizer.zero_grad()  # (the actor's loss left gradients on the critics' bodies)

                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                polyak_update(self.actor.parameters(), self.actor_target.parameters(), self.tau)
                polyak_update(self.critic_batch_norm_stats, self.critic_batch_norm_stats_target, 1.0)
                polyak_update(self.actor_batch_norm_stats, self.actor_batch_norm_stats_target, 1.0)

        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        if actor_losses:
            self.logger.record("train/actor_loss", np.mean(actor_losses))
        self._record_critics(trainer, critic_losses)
