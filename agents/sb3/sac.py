"""``AlraoSAC``: Stable-Baselines3's SAC whose twin critics are Alrao models (no critic learning rate).

::

    from agents.sb3 import AlraoSAC

    model = AlraoSAC("MlpPolicy", "Pendulum-v1", policy_kwargs=dict(eta_min=1e-5, eta_max=10.0, n_heads=10,
                     net_arch=[256, 256]), tensorboard_log="runs/", seed=0)
    model.learn(20_000, progress_bar=True)
    model.save("alrao_sac"); model = AlraoSAC.load("alrao_sac")

Each critic ``Q_k`` is an Alrao model (:mod:`agents.sb3.critic`) trained on SAC's soft TD target

.. math::
   y = r + \\gamma (1 - d) \\left(\\min_k \\bar Q_k(s', a') - \\alpha \\log \\pi(a' | s')\\right),
   \\qquad a' \\sim \\pi(\\cdot | s'),

(``bar Q_k``: the target critics, their heads averaged with the online critics' switch weights) by one
fused Alrao step (:class:`alrao_rl.AlraoStep`: the mixture negative log-likelihood for the bodies, each
head its own, then the switches). The actor minimizes ``E[alpha log pi(a|s) - min_k Q_k(s, a)]`` through the
critics' averaged outputs, by SB3's Adam at ``learning_rate`` (default; ``actor_alrao=True``: per-unit Alrao
rates on the whole actor). The entropy coefficient keeps SB3's own Adam optimizer at ``learning_rate``.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import SAC
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.noise import ActionNoise
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor
from stable_baselines3.common.type_aliases import GymEnv, Schedule
from stable_baselines3.common.utils import polyak_update
from stable_baselines3.sac.policies import SACPolicy
from torch import nn

from alrao_rl import AlraoSGD

from .critic import AlraoContinuousCritic, AlraoCriticAlgorithm, AlraoCriticPolicy

__all__ = ["AlraoSAC", "AlraoSACPolicy"]


class AlraoSACPolicy(AlraoCriticPolicy, SACPolicy):
    """SAC policy whose critics are Alrao models (:class:`agents.sb3.critic.AlraoContinuousCritic`); only
    :class:`AlraoSAC` trains it (``stable_baselines3.SAC`` with it is a ``TypeError`` at the first update).

    SB3's ``SACPolicy`` arguments, and:

    :param eta_min: lower end of the log-uniform interval of per-unit rates.
    :param eta_max: upper end of that interval.
    :param n_heads: output heads per critic ``N``.
    :param max_weight: freeze a body unit once one of its weights exceeds this (None: only non-finite ones).
    :param averaging: ``"filtered"`` (default) or ``"predictive"`` switch posterior.
    :param alrao_seed: seed of the per-unit rates (None: 0; ``AlraoSAC`` passes its own ``seed``).
    :param head_step: each head's own step, ``"plain"`` (Algorithm 1) or ``"normalized"``.
    :param critic_optimizer_class: :class:`alrao_rl.AlraoSGD` (default, the paper's) or :class:`alrao_rl.AlraoAdam`.
    :param actor_alrao: also step the actor with per-unit Alrao rates (default False: SB3's Adam).
    """

    critic: AlraoContinuousCritic  # type: ignore[assignment]
    critic_target: AlraoContinuousCritic  # type: ignore[assignment]
    _algorithm_name = "AlraoSAC"
    _base_name = "SAC"

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        use_sde: bool = False,
        log_std_init: float = -3,
        use_expln: bool = False,
        clip_mean: float = 2.0,
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
            observation_space, action_space, lr_schedule, net_arch, activation_fn, use_sde, log_std_init, use_expln,
            clip_mean, features_extractor_class, features_extractor_kwargs, normalize_images, optimizer_class,
            optimizer_kwargs, n_critics, share_features_extractor,
        )


class AlraoSAC(AlraoCriticAlgorithm, SAC):
    """SB3's SAC whose critics are trained by Alrao (module docstring); ``AlraoSAC("MlpPolicy", env)`` uses
    :class:`AlraoSACPolicy`.

    Same arguments and defaults as :class:`stable_baselines3.SAC` (``learning_rate`` is the actor's and the
    entropy coefficient's; the critics have none), and:

    :param td_variance: the critics' heads' Gaussian variance: ``"running"`` (default) each critic's running
        mean of its squared TD error (:class:`alrao_rl.RunningVariance`), ``"unit"`` the paper's 1. The current
        values are the attribute ``heads_variance`` (one per critic), saved by ``save``/``load``.

    ``train()`` logs SAC's entries (``train/critic_loss`` is the critics' mean mixture NLL) and, per critic
    ``k``, ``alrao/critic_{k}/heads_variance`` and ``alrao/critic_{k}/posterior/head_{j}`` (the averaging
    weights). ``policy_kwargs``: see :class:`AlraoSACPolicy` (``alrao_seed`` defaults to this model's ``seed``).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"MlpPolicy": AlraoSACPolicy}
    policy: AlraoSACPolicy  # type: ignore[assignment]
    critic: AlraoContinuousCritic  # type: ignore[assignment]
    critic_target: AlraoContinuousCritic  # type: ignore[assignment]
    _policy_base = AlraoSACPolicy

    def __init__(
        self,
        policy: str | type[AlraoSACPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 3e-4,
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
        ent_coef: str | float = "auto",
        target_update_interval: int = 1,
        target_entropy: str | float = "auto",
        use_sde: bool = False,
        sde_sample_freq: int = -1,
        use_sde_at_warmup: bool = False,
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
            ent_coef, target_update_interval, target_entropy, use_sde, sde_sample_freq, use_sde_at_warmup,
            stats_window_size, tensorboard_log, policy_kwargs, verbose, seed, device, _init_setup_model=False,
        )
        if _init_setup_model:
            self._setup_model()

    def train(self, gradient_steps: int, batch_size: int = 64) -> None:
        """``gradient_steps`` SAC updates, SB3's in order, the critics' by one Alrao step each (module docstring).

        :param gradient_steps: number of gradient steps.
        :param batch_size: minibatch size.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self._plain_optimizers(self.ent_coef_optimizer))
        trainer = self._critic_trainer()
        online_switch = self.critic.q_model.switch
        ent_coef_losses, ent_coefs, actor_losses, critic_losses = [], [], [], []
        for gradient_step in range(gradient_steps):
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
            if self.use_sde:
                self.actor.reset_noise()
            actions_pi, log_prob = self.actor.action_log_prob(replay_data.observations)
            log_prob = log_prob.reshape(-1, 1)

            ent_coef_loss = None
            if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
                ent_coef = th.exp(self.log_ent_coef.detach())
                assert isinstance(self.target_entropy, float)
                ent_coef_loss = -(self.log_ent_coef * (log_prob + self.target_entropy).detach()).mean()
                ent_coef_losses.append(ent_coef_loss.item())
            else:
                ent_coef = self.ent_coef_tensor
            ent_coefs.append(ent_coef.item())
            if ent_coef_loss is not None and self.ent_coef_optimizer is not None:
                self.ent_coef_optimizer.zero_grad()
                ent_coef_loss.backward()
                self.ent_coef_optimizer.step()

            with th.no_grad():
                next_actions, next_log_prob = self.actor.action_log_prob(replay_data.next_observations)
                next_q = th.cat(self.critic_target(replay_data.next_observations, next_actions, switch=online_switch),
                                dim=1)
                next_q = next_q.min(dim=1, keepdim=True).values - ent_coef * next_log_prob.reshape(-1, 1)
                target_q = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q

            result = trainer(replay_data.observations, replay_data.actions, target_q)
            critic_losses.append(float(np.mean(result.loss)))

            q_pi = th.cat(self.critic(replay_data.observations, actions_pi), dim=1)
            actor_loss = (ent_coef * log_prob - q_pi.min(dim=1, keepdim=True).values).mean()
            actor_losses.append(actor_loss.item())
            self.actor.optimizer.zero_grad()
            actor_loss.backward()
            self.actor.optimizer.step()
            self.critic.optimizer.zero_grad()  # (the actor's loss left gradients on the critics' bodies)

            if gradient_step % self.target_update_interval == 0:
                polyak_update(self.critic.parameters(), self.critic_target.parameters(), self.tau)
                polyak_update(self.batch_norm_stats, self.batch_norm_stats_target, 1.0)

        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/ent_coef", np.mean(ent_coefs))
        self.logger.record("train/actor_loss", np.mean(actor_losses))
        if ent_coef_losses:
            self.logger.record("train/ent_coef_loss", np.mean(ent_coef_losses))
        self._record_critics(trainer, critic_losses)
