"""Alrao critics for SB3's SAC and TD3: the twin Q-networks as one Alrao model with a member per critic.

SB3's ``ContinuousCritic`` holds ``n_critics`` MLPs ``Q_k(s, a) = MLP_k([phi(s), a])``, trained by the squared
error against one shared TD target ``y`` at a learning rate. :class:`AlraoContinuousCritic` holds the same
``n_critics`` networks as one :class:`alrao_rl.AlraoModel` with ``members=n_critics`` (each critic a member:
its own body with per-unit rates ``eta_i ~ log-U(eta_min, eta_max)``, its own ``N`` Gaussian heads with
log-spaced rates and its own switch), so one fused :class:`alrao_rl.AlraoStep` trains every critic at once:

.. math::
   L_k = -\\frac1B \\sum_b \\log \\sum_j a^k_j\\, \\mathcal N(y_b;\\ \\mu^k_j(s_b, a_b), \\sigma_k^2), \\qquad
   Q_k(s, a) = \\sum_j a^k_j\\, \\mu^k_j(s, a),

the body of critic ``k`` following the gradient of ``L_k``, head ``j`` the gradient of its own negative
log-likelihood, the switch of critic ``k`` updated with its heads' likelihoods (Algorithm 1); ``sigma_k^2``
is, by default, the running mean of critic ``k``'s squared TD error (:class:`alrao_rl.RunningVariance`), as
for :class:`agents.sb3.AlraoDQN`. ``forward`` returns each critic's ``Q_k`` differentiable with respect to
the actions (the actor's loss needs ``dQ/da``), heads and weights held fixed; the target critics average
their heads with the *online* critics' switches. Each member starts from the weights SB3's critic ``k``
would have (the same layers, created in the same order).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.policies import BaseModel
from stable_baselines3.common.preprocessing import get_action_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, create_mlp
from torch import nn
from torch.nn import functional as F

from alrao_rl import AlraoAdam, AlraoModel, AlraoSGD, AlraoStep, RunningVariance, StepResult, Switch

from ..stacked import StackedLinear, load_mlp, stacked_mlp

__all__ = ["AlraoContinuousCritic", "AlraoCriticAlgorithm", "AlraoCriticPolicy", "CriticTrainer"]

TD_VARIANCES: tuple[str, ...] = ("running", "unit")


class AlraoContinuousCritic(BaseModel):
    """SB3 ``ContinuousCritic``-compatible twin critics held as one Alrao model (module docstring).

    :param observation_space: observation space.
    :param action_space: a ``Box`` action space.
    :param net_arch: hidden widths of each critic's body.
    :param features_extractor: SB3 features extractor; it must have no trainable parameters unless it is
        the actor's (``share_features_extractor``), which the critics' loss does not train (as in SB3).
    :param features_dim: its output size.
    :param activation_fn: activation after each hidden layer.
    :param normalize_images: divide image observations by 255.
    :param n_critics: number of critics (members).
    :param share_features_extractor: whether the features extractor is the actor's.
    :param n_heads: Alrao output heads per critic.
    :param averaging: ``"filtered"`` or ``"predictive"`` switch posterior (see :class:`alrao_rl.AlraoModel`).
    :param head_step: each head's own step, ``"plain"`` or ``"normalized"``.
    """

    features_extractor: BaseFeaturesExtractor

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Box,
        net_arch: list[int],
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        n_critics: int = 2,
        share_features_extractor: bool = True,
        n_heads: int = 10,
        averaging: str = "filtered",
        head_step: str = "plain",
    ) -> None:
        super().__init__(observation_space, action_space, features_extractor=features_extractor,
                         normalize_images=normalize_images)
        if not share_features_extractor and any(p.requires_grad for p in features_extractor.parameters()):
            raise ValueError(
                f"the Alrao critics need a features extractor without trainable parameters (e.g. FlattenExtractor) "
                f"or the actor's (share_features_extractor=True); got {type(features_extractor).__name__} with "
                f"parameters"
            )
        if isinstance(n_critics, bool) or not isinstance(n_critics, int) or n_critics < 1:
            raise ValueError(f"n_critics must be an int >= 1, got {n_critics!r}")
        self.share_features_extractor = share_features_extractor
        self.n_critics = n_critics
        in_dim = features_dim + get_action_dim(self.action_space)
        body = stacked_mlp([in_dim, *net_arch], n_critics, activate_last=True, activation_fn=activation_fn)
        # SB3's critic k, created in SB3's order (hence the same initial weights), copied into member k
        singles = [nn.Sequential(*create_mlp(in_dim, 1, net_arch, activation_fn)) for _ in range(n_critics)]
        self.q_model = AlraoModel(body, singles[0][-1], n_heads, "regression", averaging=averaging,  # type: ignore[arg-type]
                                  head_step=head_step, members=n_critics)  # type: ignore[arg-type]
        with th.no_grad():
            for k, single in enumerate(singles):
                load_mlp(body, k, single[:-1])
                self.q_model.heads.weight[k] = single[-1].weight
                self.q_model.heads.bias[k] = single[-1].bias

    def _input(self, obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """``[phi(s), a]`` repeated for every critic: ``[n_critics, B, features + actions]``."""
        with th.set_grad_enabled(not self.share_features_extractor and th.is_grad_enabled()):
            features = self.extract_features(obs, self.features_extractor)
        x = th.cat([features, actions], dim=1)
        return x.expand(self.n_critics, *x.shape)

    def forward(self, obs: th.Tensor, actions: th.Tensor, switch: Switch | None = None) -> tuple[th.Tensor, ...]:
        """Each critic's ``Q_k(s, a) = sum_j a^k_j mu^k_j(s, a)``, ``n_critics`` tensors ``[B, 1]``, differentiable
        with respect to ``actions`` (and the bodies), the heads held fixed.

        :param obs: observations.
        :param actions: actions ``[B, action_dim]``.
        :param switch: average with this switch (the online critics', for the target critics) instead of
            this model's own.
        """
        z = self.q_model.body(self._input(obs, actions))
        return tuple(self.q_model.averaged(z, switch).unbind(0))

    def q1_forward(self, obs: th.Tensor, actions: th.Tensor) -> th.Tensor:
        """The first critic's ``Q_1(s, a)`` ``[B, 1]`` (what TD3's actor maximizes), as :meth:`forward`, computed
        on the first member's weights only (the heads averaged into one linear layer first)."""
        model = self.q_model
        z = self._input(obs, actions)[0]
        for layer in model.body:
            z = F.linear(z, layer.weight[0], layer.bias[0]) if isinstance(layer, StackedLinear) else layer(z)
        heads = model.heads
        if heads.any_dead_feature:
            z = z.masked_fill(heads.dead_features[0], 0.0)
        _, a = model.switch.averaging_weights(model.averaging == "filtered", z.dtype, z.device)
        n, out, d = heads.weight.shape[1:]
        weight = (a[0] @ heads.weight[0].detach().reshape(n, out * d)).view(out, d)
        bias = a[0] @ heads.bias[0].detach()
        q = F.linear(z, weight, bias)
        return q if math.isfinite(float(q.detach().sum())) else self(obs, actions)[0]


class CriticTrainer:
    """One Alrao step of every critic on a minibatch: ``AlraoStep`` on the critics' model with members.

    :param critic: the online critics.
    :param optimizer: the Alrao optimizer built over ``critic.q_model``.
    :param td_variance: ``"running"`` (each critic's heads at the running mean of its squared TD error,
        started at ``values``) or ``"unit"`` (the paper's variance 1).
    :param values: the running variances to start from, one per critic (None: not started).
    """

    def __init__(
        self,
        critic: AlraoContinuousCritic,
        optimizer: AlraoSGD | AlraoAdam,
        td_variance: str,
        values: list[float | None] | None = None,
    ) -> None:
        if td_variance not in TD_VARIANCES:
            raise ValueError(f"td_variance must be one of {TD_VARIANCES}, got {td_variance!r}")
        self.critic = critic
        self.optimizer = optimizer
        self.step = AlraoStep(critic.q_model, optimizer)
        self.variance: RunningVariance | float = 1.0
        if td_variance == "running":
            self.variance = RunningVariance(members=critic.n_critics)
            if values is not None:
                self.variance.load_state_dict({"values": [np.nan if v is None else v for v in values]})

    def __call__(self, obs: th.Tensor, actions: th.Tensor, target: th.Tensor) -> StepResult:
        """Train every critic on ``(obs, actions)`` towards the shared TD target ``target`` ``[B, 1]``.

        :return: the step's result; ``loss`` is each critic's mixture NLL ``[n_critics]``.
        """
        critic = self.critic
        x = critic._input(obs, actions).detach()
        y = target.reshape(1, -1, 1).expand(critic.n_critics, -1, 1)
        return self.step(x, y, variance=self.variance)

    def variances(self) -> list[float | None]:
        """Each critic's heads' variance (None before the first step with a running variance)."""
        if isinstance(self.variance, RunningVariance):
            return [None if np.isnan(v) else float(v) for v in self.variance.values]
        return [self.variance] * self.critic.n_critics

    def log(self, logger: Any) -> None:
        """Record each critic's heads' variance and averaging weights (``alrao/critic_{k}/...``) in an SB3 logger."""
        log_a = self.critic.q_model.averaging_log_weights().exp().tolist()
        for k, (weights, variance) in enumerate(zip(log_a, self.variances(), strict=True)):
            if variance is not None:
                logger.record(f"alrao/critic_{k}/heads_variance", variance)
            for j, a_j in enumerate(weights):
                logger.record(f"alrao/critic_{k}/posterior/head_{j}", a_j)


_MISUSE = (
    "{policy} can only be trained by agents.sb3.{algo}: its critics must be trained by the Alrao mixture loss and "
    "switch update, which other algorithms (e.g. stable_baselines3.{base}) do not do. Use `from agents.sb3 import "
    "{algo}; {algo}(\"MlpPolicy\", env, ...)` instead."
)


class AlraoCriticPolicy:
    """What :class:`agents.sb3.AlraoSACPolicy` and :class:`agents.sb3.AlraoTD3Policy` add to SB3's policies
    (mixed in before them): Alrao critics, their Alrao optimizer, optionally an Alrao actor, and the guard that
    only the matching Alrao algorithm trains them.

    ``critic.optimizer`` is ``critic_optimizer_class(critic.q_model, eta_min, eta_max, seed=alrao_seed,
    max_weight=max_weight)`` (multiplier 1: the critics have no learning rate; the algorithm's
    ``learning_rate`` is the actor's and the entropy coefficient's). With ``actor_alrao`` the actor too is
    stepped by that class over its whole network (per-unit rates drawn with ``alrao_seed + 1``), at
    multiplier 1; otherwise by SB3's ``optimizer_class`` (Adam) at ``learning_rate``.
    """

    _algorithm_name = ""
    _base_name = ""

    def _alrao_setup(
        self,
        eta_min: float,
        eta_max: float,
        n_heads: int,
        max_weight: float | None,
        averaging: str,
        alrao_seed: int | None,
        head_step: str,
        critic_optimizer_class: type[th.optim.Optimizer],
        actor_alrao: bool,
    ) -> None:
        """Keep the Alrao arguments (before SB3's ``__init__`` runs ``_build``)."""
        if not (isinstance(critic_optimizer_class, type) and issubclass(critic_optimizer_class, (AlraoSGD, AlraoAdam))):
            raise TypeError(f"critic_optimizer_class must be alrao_rl.AlraoSGD or AlraoAdam, got "
                            f"{critic_optimizer_class!r}")
        self.eta_min, self.eta_max, self.n_heads, self.max_weight = eta_min, eta_max, n_heads, max_weight
        self.averaging, self.head_step = averaging, head_step
        self.alrao_seed = 0 if alrao_seed is None else alrao_seed
        self.critic_optimizer_class = critic_optimizer_class
        self.actor_alrao = actor_alrao
        self._alrao_trainer = False

    def make_critic(self, features_extractor: BaseFeaturesExtractor | None = None) -> AlraoContinuousCritic:
        kwargs = self._update_features_extractor(self.critic_kwargs, features_extractor)  # type: ignore[attr-defined]
        kwargs.update(n_heads=self.n_heads, averaging=self.averaging, head_step=self.head_step)
        return AlraoContinuousCritic(**kwargs).to(self.device)  # type: ignore[attr-defined]

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)  # type: ignore[misc]
        alrao = {"eta_min": self.eta_min, "eta_max": self.eta_max, "max_weight": self.max_weight}
        self.critic.optimizer = self.critic_optimizer_class(  # type: ignore[attr-defined]
            self.critic.q_model, seed=self.alrao_seed, **alrao  # type: ignore[attr-defined]
        )
        if self.actor_alrao:
            self.actor.optimizer = self.critic_optimizer_class(  # type: ignore[attr-defined]
                self.actor, seed=self.alrao_seed + 1, **alrao  # type: ignore[attr-defined]
            )

    def set_training_mode(self, mode: bool) -> None:
        """As SB3's; training mode only for the matching Alrao algorithm (every SB3 ``train()`` starts with
        ``set_training_mode(True)``), a ``TypeError`` otherwise."""
        if mode and not self._alrao_trainer:
            raise TypeError(_MISUSE.format(policy=type(self).__name__, algo=self._algorithm_name,
                                           base=self._base_name))
        super().set_training_mode(mode)  # type: ignore[misc]

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()  # type: ignore[misc]
        data.update(eta_min=self.eta_min, eta_max=self.eta_max, n_heads=self.n_heads, max_weight=self.max_weight,
                    averaging=self.averaging, alrao_seed=self.alrao_seed, head_step=self.head_step,
                    critic_optimizer_class=self.critic_optimizer_class, actor_alrao=self.actor_alrao)
        return data


class AlraoCriticAlgorithm:
    """What :class:`agents.sb3.AlraoSAC` and :class:`agents.sb3.AlraoTD3` add to SB3's algorithms (mixed in
    before them): the critics' trainer, the heads' variances saved with the model, and learning-rate updates
    that leave the Alrao optimizers' multipliers at 1."""

    _policy_base: type = object
    td_variance: str
    heads_variance: list[float | None] | None

    def _check_alrao(self, td_variance: str) -> None:
        if td_variance not in TD_VARIANCES:
            raise ValueError(f"td_variance must be one of {TD_VARIANCES}, got {td_variance!r}")
        self.td_variance = td_variance
        self.heads_variance = None

    def _setup_model(self) -> None:
        policy_class = self.policy_class  # type: ignore[attr-defined]
        if not (isinstance(policy_class, type) and issubclass(policy_class, self._policy_base)):
            raise TypeError(f"{type(self).__name__} needs an {self._policy_base.__name__} (or a subclass), got "
                            f"{policy_class!r}")
        # a new dict (SB3 keeps the caller's); saved with the model, so load rebuilds the same rates
        self.policy_kwargs = dict(self.policy_kwargs)  # type: ignore[has-type]
        if self.policy_kwargs.get("alrao_seed") is None:
            self.policy_kwargs["alrao_seed"] = self.seed if self.seed is not None else 0  # type: ignore[attr-defined]
        super()._setup_model()  # type: ignore[misc]
        self.policy._alrao_trainer = True  # type: ignore[attr-defined]
        self._trainer: CriticTrainer | None = None

    def _critic_trainer(self) -> CriticTrainer:
        """The critics' trainer (rebuilt when the policy's critic or optimizer changed, e.g. after ``load``)."""
        critic, optimizer = self.critic, self.critic.optimizer  # type: ignore[attr-defined]
        trainer = self._trainer
        if trainer is None or trainer.critic is not critic or trainer.optimizer is not optimizer:
            trainer = self._trainer = CriticTrainer(critic, optimizer, self.td_variance, self.heads_variance)
        return trainer

    def _plain_optimizers(self, *extra: th.optim.Optimizer | None) -> list[th.optim.Optimizer]:
        """The optimizers ``learning_rate`` applies to: the actor's unless it is Alrao, and ``extra``."""
        actor = self.actor.optimizer  # type: ignore[attr-defined]
        found = [] if isinstance(actor, (AlraoSGD, AlraoAdam)) else [actor]
        return found + [o for o in extra if o is not None]

    def _record_critics(self, trainer: CriticTrainer, losses: list[float]) -> None:
        self.heads_variance = trainer.variances()
        finite = [v for v in losses if math.isfinite(v)]
        self.logger.record("train/critic_loss", float(np.mean(finite)) if finite else math.nan)  # type: ignore[attr-defined]
        trainer.log(self.logger)  # type: ignore[attr-defined]

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_trainer"]  # type: ignore[misc]

    def learn(self, total_timesteps: int, callback: Any = None, log_interval: int = 4, tb_log_name: str | None = None,
              reset_num_timesteps: bool = True, progress_bar: bool = False) -> Any:
        """SB3's ``learn``; the TensorBoard run is named after the class (``AlraoSAC_1``) unless ``tb_log_name``."""
        return super().learn(  # type: ignore[misc]
            total_timesteps=total_timesteps, callback=callback, log_interval=log_interval,
            tb_log_name=type(self).__name__ if tb_log_name is None else tb_log_name,
            reset_num_timesteps=reset_num_timesteps, progress_bar=progress_bar,
        )
