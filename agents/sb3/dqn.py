"""Alrao for Stable-Baselines3: ``AlraoDQN`` and its policy ``AlraoDQNPolicy``.

::

    from agents.sb3 import AlraoDQN, AlraoDQNPolicy

    model = AlraoDQN(AlraoDQNPolicy, env, policy_kwargs=dict(eta_min=1e-5, eta_max=10.0, n_heads=10, net_arch=[64, 64]),
                     tensorboard_log="runs/", verbose=1)
    model.learn(50_000, progress_bar=True)
    model.save("alrao_dqn"); model = AlraoDQN.load("alrao_dqn")

The Q-network is the project's Alrao model (:class:`alrao_rl.AlraoModel`): SB3's features extractor,
an MLP body whose units get per-unit learning rates ``eta_i ~ log-U(eta_min, eta_max)``, and ``N``
Gaussian regression heads with log-spaced rates, averaged by the switch posterior ``a_j``:
``Q(s, a) = sum_j a_j mu_j(s, a)``. It is trained by the Alrao mixture loss

.. math::
   L = -\\frac1B \\sum_b \\log \\sum_j a_j\\, \\mathcal N(y_b;\\ \\mu_j(s_b, a_b), \\sigma^2), \\qquad
   y_b = r_b + \\gamma^{n} (1 - d_b) \\max_{a'} \\sum_j a_j\\, \\mu^{target}_j(s'_b, a'),

(the body gets the mixture's gradient, head ``j`` the gradient of its own NLL; the target heads
are averaged with the *online* switch weights; ``sigma^2`` is, by default, a running mean of the
averaged model's squared TD error,
``sigma^2 <- max(0.99 sigma^2 + 0.01 mean_b (Q(s_b, a_b) - y_b)^2, 1e-8)``, started at the first
minibatch's value), stepped by :class:`alrao_rl.AlraoSGD`, after which the switch is updated with
each head's minibatch log-likelihood; exactly what :meth:`agents.dqn.DQNAgent.train_step` does.
Everything else (replay, exploration, target updates, callbacks, logging, saving) is SB3's ``DQN``.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar, TypeVar

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3 import DQN
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.policies import BasePolicy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, FlattenExtractor, create_mlp
from stable_baselines3.common.type_aliases import GymEnv, MaybeCallback, PyTorchObs, Schedule
from stable_baselines3.dqn.policies import DQNPolicy
from torch import nn

from alrao_rl import AlraoAdam, AlraoModel, AlraoOutput, AlraoSGD, AlraoStep, PopArt, RunningVariance, Switch

__all__ = ["AlraoDQN", "AlraoDQNPolicy", "AlraoQNetwork"]

SelfAlraoDQN = TypeVar("SelfAlraoDQN", bound="AlraoDQN")

_MISUSE = (
    "AlraoDQNPolicy can only be trained by agents.sb3.AlraoDQN: its Q-network must be trained by the Alrao "
    "mixture loss and switch update, which other algorithms (e.g. stable_baselines3.DQN) do not do. "
    "Use `from agents.sb3 import AlraoDQN; AlraoDQN(AlraoDQNPolicy, env, ...)` instead."
)


class AlraoQNetwork(BasePolicy):
    """SB3 ``QNetwork``-compatible Q-network around an :class:`alrao_rl.AlraoModel`.

    ``obs -> features extractor -> MLP body (net_arch) -> n_heads regression heads``; ``forward``
    returns the switch-averaged Q-values ``Q(s, .) = sum_j a_j mu_j(s, .)`` ``[B, A]`` (no
    gradient), ``_predict`` their argmax. Train through :meth:`alrao_output` and
    ``alrao_model.loss``.

    :param observation_space: observation space.
    :param action_space: a ``Discrete`` action space.
    :param features_extractor: SB3 features extractor (its parameters get per-unit rates too).
    :param features_dim: its output size.
    :param net_arch: hidden layer widths of the body (default ``[64, 64]``).
    :param activation_fn: activation after each hidden layer.
    :param normalize_images: divide image observations by 255.
    :param n_heads: number of Alrao output heads ``N``.
    :param averaging: ``"filtered"`` or ``"predictive"`` switch posterior (see
        :class:`alrao_rl.AlraoModel`).
    :param head_step: each head's own step, ``"plain"`` or ``"normalized"`` (see :class:`alrao_rl.AlraoModel`).

    ``value_scale``: the :class:`alrao_rl.PopArt` whose scale maps the heads' outputs back to Q-values
    (set by :class:`AlraoDQN`; None: the heads output Q-values).
    """

    action_space: spaces.Discrete

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        features_extractor: BaseFeaturesExtractor,
        features_dim: int,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        normalize_images: bool = True,
        n_heads: int = 10,
        averaging: str = "filtered",
        head_step: str = "plain",
    ) -> None:
        super().__init__(
            observation_space, action_space, features_extractor=features_extractor, normalize_images=normalize_images
        )
        self.head_step = head_step
        self.value_scale: PopArt | None = None
        if net_arch is None:
            net_arch = [64, 64]
        self.net_arch = net_arch
        self.activation_fn = activation_fn
        self.features_dim = features_dim
        self.n_heads = n_heads
        self.averaging = averaging
        # Same layers, created in the same order, as SB3's QNetwork (hence the same initial weights).
        body = nn.Sequential(*create_mlp(features_dim, -1, net_arch, activation_fn))
        head = nn.Linear(net_arch[-1] if net_arch else features_dim, int(action_space.n))
        self.alrao_model = AlraoModel(body, head, n_heads=n_heads, task="regression", averaging=averaging,  # type: ignore[arg-type]
                                      head_step=head_step)  # type: ignore[arg-type]

    def alrao_output(self, obs: PyTorchObs) -> AlraoOutput:
        """The Alrao forward pass: every head's Q-values and the body output (differentiable).

        :param obs: observations.
        """
        z = self.alrao_model.body(self.extract_features(obs, self.features_extractor))
        return self.alrao_model.output(z)

    def forward(self, obs: PyTorchObs, switch: Switch | None = None) -> th.Tensor:
        """``Q(s, .) = sum_j a_j mu_j(s, .)``, ``[B, A]`` (no gradient).

        :param obs: observations.
        :param switch: average with this switch instead of this network's own (the target network
            is averaged with the online switch).
        """
        q = self.alrao_model.predict(self.extract_features(obs, self.features_extractor), switch=switch)
        return q if self.value_scale is None else self.value_scale.denormalize(q)

    def _predict(self, observation: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        return self(observation).argmax(dim=1).reshape(-1)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            net_arch=self.net_arch,
            features_dim=self.features_dim,
            activation_fn=self.activation_fn,
            features_extractor=self.features_extractor,
            n_heads=self.n_heads,
            averaging=self.averaging,
            head_step=self.head_step,
        )
        return data


class AlraoDQNPolicy(DQNPolicy):
    """DQN policy whose Q-networks are Alrao models and whose optimizer is :class:`alrao_rl.AlraoSGD`.

    ``policy.optimizer`` is built over the whole online Q-network (features extractor, body,
    heads): ``AlraoSGD(q_net, eta_min, eta_max, seed=alrao_seed, lr=lr_schedule(1),
    max_weight=max_weight, **optimizer_kwargs)``, so ``optimizer.param_groups[*]["lr"]`` is a
    *multiplier* on every per-unit rate (see :class:`AlraoDQN`). The per-unit rates live in the
    optimizer state (``alrao_rate``) and the switch in the Q-network's buffers, so SB3's
    ``save``/``load`` carry both.

    Only :class:`AlraoDQN` can train it. Every SB3 algorithm's ``train()`` starts with
    ``policy.set_training_mode(True)``; this policy raises a ``TypeError`` naming ``AlraoDQN`` there
    unless an ``AlraoDQN`` built it (``AlraoDQN._setup_model`` marks the policy, also after
    ``load``), so ``stable_baselines3.DQN(AlraoDQNPolicy, env).learn(...)`` and ``DQN.load`` of an
    ``AlraoDQN`` file fail at their first gradient step. Acting, ``predict`` and ``evaluate_policy``
    only use evaluation mode and work anywhere. As a second line, ``q_net(obs)`` returns Q-values
    without gradient, so no other loss could train the network silently.

    :param observation_space: observation space.
    :param action_space: a ``Discrete`` action space.
    :param lr_schedule: learning-rate schedule; ``lr_schedule(1)`` is the initial multiplier.
    :param net_arch: hidden widths of the body (default ``[64, 64]``, ``[]`` with ``NatureCNN``).
    :param activation_fn: activation function.
    :param features_extractor_class: SB3 features extractor.
    :param features_extractor_kwargs: its keyword arguments.
    :param normalize_images: divide image observations by 255.
    :param optimizer_class: :class:`alrao_rl.AlraoSGD` (default, the paper's) or
        :class:`alrao_rl.AlraoAdam`.
    :param optimizer_kwargs: further keyword arguments of the optimizer (e.g. ``momentum``).
    :param eta_min: lower end of the log-uniform interval of per-unit rates.
    :param eta_max: upper end of that interval.
    :param n_heads: number of output heads ``N``.
    :param max_weight: freeze a body unit once one of its weights exceeds this (None: only non-finite
        ones; the optimizer guards the heads against non-finite weights only).
    :param averaging: ``"filtered"`` (default; protects the TD targets from diverged heads) or
        ``"predictive"`` switch posterior.
    :param alrao_seed: seed of the per-unit rates; None: 0 (``AlraoDQN`` passes its own ``seed``).
    :param head_step: each head's own step: ``"plain"`` (default, Algorithm 1, as ``agents.dqn.DQNConfig``) or
        ``"normalized"`` (divided by the trace of its curvature); see :class:`alrao_rl.AlraoModel`.
    """

    q_net: AlraoQNetwork  # type: ignore[assignment]
    q_net_target: AlraoQNetwork  # type: ignore[assignment]
    optimizer: AlraoSGD | AlraoAdam  # type: ignore[assignment]

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Discrete,
        lr_schedule: Schedule,
        net_arch: list[int] | None = None,
        activation_fn: type[nn.Module] = nn.ReLU,
        features_extractor_class: type[BaseFeaturesExtractor] = FlattenExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        normalize_images: bool = True,
        optimizer_class: type[th.optim.Optimizer] = AlraoSGD,
        optimizer_kwargs: dict[str, Any] | None = None,
        eta_min: float = 1e-5,
        eta_max: float = 10.0,
        n_heads: int = 10,
        max_weight: float | None = 100.0,
        averaging: str = "filtered",
        alrao_seed: int | None = None,
        head_step: str = "plain",
    ) -> None:
        if not (isinstance(optimizer_class, type) and issubclass(optimizer_class, (AlraoSGD, AlraoAdam))):
            raise TypeError(
                f"AlraoDQNPolicy needs an Alrao optimizer (alrao_rl.AlraoSGD or AlraoAdam), got optimizer_class="
                f"{optimizer_class!r}"
            )
        # _build() runs inside DQNPolicy.__init__, so what it reads must be set first (plain attributes
        # may be set on an nn.Module before its __init__).
        self.eta_min = eta_min
        self.eta_max = eta_max
        self.n_heads = n_heads
        self.max_weight = max_weight
        self.averaging = averaging
        self.head_step = head_step
        self.alrao_seed = 0 if alrao_seed is None else alrao_seed
        self._alrao_trainer = False
        super().__init__(
            observation_space, action_space, lr_schedule, net_arch, activation_fn, features_extractor_class,
            features_extractor_kwargs, normalize_images, optimizer_class, optimizer_kwargs,
        )

    def _build(self, lr_schedule: Schedule) -> None:
        """Online and target Alrao Q-networks, and the Alrao optimizer over the online one.

        :param lr_schedule: ``lr_schedule(1)`` is the initial multiplier on every Alrao rate.
        """
        self.q_net = self.make_q_net()
        self.q_net_target = self.make_q_net()
        self.q_net_target.load_state_dict(self.q_net.state_dict())
        self.q_net_target.set_training_mode(False)
        self.optimizer = self.optimizer_class(  # type: ignore[call-arg]
            self.q_net,
            eta_min=self.eta_min,
            eta_max=self.eta_max,
            seed=self.alrao_seed,
            lr=lr_schedule(1),
            max_weight=self.max_weight,
            **self.optimizer_kwargs,
        )

    def make_q_net(self) -> AlraoQNetwork:  # type: ignore[override]
        net_args = self._update_features_extractor(self.net_args, features_extractor=None)
        net_args.update(n_heads=self.n_heads, averaging=self.averaging, head_step=self.head_step)
        return AlraoQNetwork(**net_args).to(self.device)

    def set_training_mode(self, mode: bool) -> None:
        """Put the policy in training (``mode=True``) or evaluation mode.

        Every SB3 algorithm's ``train()`` starts with ``set_training_mode(True)``; only
        :class:`AlraoDQN` may do so.

        :param mode: True for training mode.
        :raises TypeError: when ``mode`` is True and the policy is not owned by an ``AlraoDQN``.
        """
        if mode and not self._alrao_trainer:
            raise TypeError(_MISUSE)
        super().set_training_mode(mode)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            eta_min=self.eta_min,
            eta_max=self.eta_max,
            n_heads=self.n_heads,
            max_weight=self.max_weight,
            averaging=self.averaging,
            alrao_seed=self.alrao_seed,
            head_step=self.head_step,
        )
        return data


TD_VARIANCES: tuple[str, ...] = ("running", "unit")
VALUE_NORMS: tuple[str, ...] = ("popart", "none")


class AlraoDQN(DQN):
    """SB3's DQN whose Q-network is trained by Alrao (use it with :class:`AlraoDQNPolicy`).

    Same arguments and defaults as :class:`stable_baselines3.DQN`, except:

    :param learning_rate: a **multiplier** on every Alrao learning rate (default 1.0), not a
        learning rate. SB3 writes ``learning_rate`` (or ``schedule(progress_remaining)``) into every
        optimizer group's ``lr`` before each ``train()``; with the Alrao optimizers a parameter of
        unit ``i`` moves by ``lr * eta_i * grad``, so 1.0 keeps the sampled rates
        ``eta_i in [eta_min, eta_max]`` and a schedule scales them all at once (0.5 halves every
        step). ``train/learning_rate`` logs the multiplier.
    :param max_grad_norm: gradient clipping by global norm, default ``inf`` (off). SB3's DQN clips
        at 10, but clipping multiplies every unit's step by the same data-dependent factor
        ``max_grad_norm / ||g||``, where ``||g||`` is dominated by the few units and heads with the
        largest gradients (typically the diverging high-rate ones): the rates actually used would
        no longer be the sampled ``eta_i``, and one runaway unit would slow every other one down.
        Runaway units are handled by the optimizer's ``max_weight`` guard instead. A finite value
        clips as SB3 does.
    :param td_variance: the heads' Gaussian variance ``sigma^2``: ``"running"`` (default, as
        ``agents.dqn.DQNConfig``) a running mean of the averaged model's squared TD error (see the
        module docstring), so the likelihood has the scale of the TD errors; ``"unit"``: 1, as in
        the paper. The current value is the attribute ``heads_variance`` (None before the first
        ``train()``), saved by ``save``/``load``.
    :param value_norm: ``"none"`` (default, as ``agents.dqn.DQNConfig``): the heads learn the TD targets as they
        are; ``"popart"``: they learn TD targets divided by their running root mean square and are rescaled with
        it, so their outputs in return units never jump (:class:`alrao_rl.PopArt`; ``q_net(obs)`` returns
        Q-values in return units; its state is the attribute ``popart_state``, saved by ``save``/``load``).

    Everything else is SB3's ``DQN``: replay, epsilon-greedy exploration, target updates every
    ``target_update_interval`` steps with ``tau`` (the target's heads are averaged with the online
    switch weights), callbacks, logging, saving. ``train()`` logs ``train/loss`` (the mixture
    NLL), ``train/n_updates``, ``alrao/heads_variance`` and
    ``alrao/posterior/head_{j}``, the averaging weight ``a_j`` of each head (the same tags as
    ``scripts/run_dqn.py``).

    ``policy_kwargs`` (see :class:`AlraoDQNPolicy`): ``eta_min``, ``eta_max``, ``n_heads``,
    ``net_arch``, ``activation_fn``, ``max_weight``, ``averaging``, ``alrao_seed`` (default: this
    model's ``seed``, 0 if None).
    """

    policy_aliases: ClassVar[dict[str, type[BasePolicy]]] = {"MlpPolicy": AlraoDQNPolicy}
    policy: AlraoDQNPolicy  # type: ignore[assignment]
    q_net: AlraoQNetwork  # type: ignore[assignment]
    q_net_target: AlraoQNetwork  # type: ignore[assignment]

    def __init__(
        self,
        policy: str | type[AlraoDQNPolicy],
        env: GymEnv | str,
        learning_rate: float | Schedule = 1.0,
        buffer_size: int = 1_000_000,
        learning_starts: int = 100,
        batch_size: int = 32,
        tau: float = 1.0,
        gamma: float = 0.99,
        train_freq: int | tuple[int, str] = 4,
        gradient_steps: int = 1,
        replay_buffer_class: type[ReplayBuffer] | None = None,
        replay_buffer_kwargs: dict[str, Any] | None = None,
        optimize_memory_usage: bool = False,
        n_steps: int = 1,
        target_update_interval: int = 10000,
        exploration_fraction: float = 0.1,
        exploration_initial_eps: float = 1.0,
        exploration_final_eps: float = 0.05,
        max_grad_norm: float = math.inf,
        stats_window_size: int = 100,
        tensorboard_log: str | None = None,
        policy_kwargs: dict[str, Any] | None = None,
        verbose: int = 0,
        seed: int | None = None,
        device: th.device | str = "auto",
        _init_setup_model: bool = True,
        td_variance: str = "running",
        value_norm: str = "none",
    ) -> None:
        if td_variance not in TD_VARIANCES:
            raise ValueError(f"td_variance must be one of {TD_VARIANCES}, got {td_variance!r}")
        if value_norm not in VALUE_NORMS:
            raise ValueError(f"value_norm must be one of {VALUE_NORMS}, got {value_norm!r}")
        self.td_variance = td_variance
        self.value_norm = value_norm
        self.popart_state: dict[str, Any] | None = None
        self.heads_variance: float | None = 1.0 if td_variance == "unit" else None
        super().__init__(
            policy, env, learning_rate, buffer_size, learning_starts, batch_size, tau, gamma, train_freq,
            gradient_steps, replay_buffer_class, replay_buffer_kwargs, optimize_memory_usage, n_steps,
            target_update_interval, exploration_fraction, exploration_initial_eps, exploration_final_eps,
            max_grad_norm, stats_window_size, tensorboard_log, policy_kwargs, verbose, seed, device,
            _init_setup_model=False,
        )
        if _init_setup_model:
            self._setup_model()

    def _setup_model(self) -> None:
        if not (isinstance(self.policy_class, type) and issubclass(self.policy_class, AlraoDQNPolicy)):
            raise TypeError(f"AlraoDQN needs an AlraoDQNPolicy (or a subclass), got {self.policy_class!r}")
        # A new dict (SB3 keeps a reference to the caller's); saved with the model, so load rebuilds the same rates.
        self.policy_kwargs = dict(self.policy_kwargs)
        if self.policy_kwargs.get("alrao_seed") is None:
            self.policy_kwargs["alrao_seed"] = self.seed if self.seed is not None else 0
        super()._setup_model()
        # the tag scripts/run_dqn.py uses: one name for the averaging weights actually used
        self._posterior_keys = tuple(f"alrao/posterior/head_{j}" for j in range(self.policy.n_heads))
        self.policy._alrao_trainer = True  # lets the policy enter training mode (see AlraoDQNPolicy)
        self._popart = PopArt() if self.value_norm == "popart" else None
        if self._popart is not None and self.popart_state is not None:  # (a loaded model)
            self._popart.load_state_dict(self.popart_state)
        self.policy.q_net.value_scale = self.policy.q_net_target.value_scale = self._popart

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        """``gradient_steps`` Alrao DQN steps on minibatches from the replay buffer.

        Each: ``y = r + gamma^n (1 - d) max_a' Q_target(s', a')`` (target heads averaged with the
        online switch), update of the heads' variance, mixture NLL of ``y`` under the heads'
        ``Q(s, a)``, backward, optional clipping, optimizer step, switch update with each head's
        log-likelihood.

        :param gradient_steps: number of gradient steps.
        :param batch_size: minibatch size.
        """
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        model = self.q_net.alrao_model
        optimizer = self.policy.optimizer
        variance: RunningVariance | float = 1.0
        if self.td_variance == "running":
            variance = RunningVariance(value=self.heads_variance)
        # clipping needs every gradient before the step: only then the loss-backward-step path
        step = None
        if not math.isfinite(self.max_grad_norm):
            step = getattr(self, "_alrao_step", None)
            if step is None or step.model is not model or step.optimizer is not optimizer:  # (a loaded model)
                step = self._alrao_step = AlraoStep(model, optimizer)
        losses = []
        for _ in range(gradient_steps):
            replay_data = self.replay_buffer.sample(batch_size, env=self._vec_normalize_env)  # type: ignore[union-attr]
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
            with th.no_grad():
                next_q = self.q_net_target(replay_data.next_observations, switch=model.switch)
                next_q = next_q.max(dim=1).values.reshape(-1, 1)
                target = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q
            target = target.reshape(-1)
            if self._popart is not None:  # the heads learn y rescaled; online and target heads keep their outputs
                target = self._popart.update(target, (model.heads, self.q_net_target.alrao_model.heads))
            obs, actions = replay_data.observations, replay_data.actions.long().reshape(-1)
            z = model.body(self.q_net.extract_features(obs, self.q_net.features_extractor))
            if step is not None:
                x = obs if isinstance(obs, th.Tensor) else None
                losses.append(float(step(x, target, index=actions, variance=variance, features=z).loss))
                continue
            out = model.output(z, inputs=obs if isinstance(obs, th.Tensor) else None).gather(actions)
            var = variance
            if isinstance(var, RunningVariance):
                var = var.update(float(th.nn.functional.mse_loss(out.prediction, target)))
            loss, head_ll = model.loss(out, target, variance=var)
            losses.append(loss.item())
            optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            optimizer.step()
            model.switch.update(head_ll)
        if isinstance(variance, RunningVariance):
            self.heads_variance = variance.value
        if self._popart is not None:
            self.popart_state = self._popart.state_dict()

        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))
        if self.heads_variance is not None:
            self.logger.record("alrao/heads_variance", self.heads_variance)
        for key, a_j in zip(self._posterior_keys, model.averaging_log_weights().exp().tolist(), strict=True):
            self.logger.record(key, a_j)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_posterior_keys", "_alrao_step", "_popart"]

    def learn(
        self: SelfAlraoDQN,
        total_timesteps: int,
        callback: MaybeCallback = None,
        log_interval: int = 4,
        tb_log_name: str = "AlraoDQN",
        reset_num_timesteps: bool = True,
        progress_bar: bool = False,
    ) -> SelfAlraoDQN:
        return super().learn(
            total_timesteps=total_timesteps,
            callback=callback,
            log_interval=log_interval,
            tb_log_name=tb_log_name,
            reset_num_timesteps=reset_num_timesteps,
            progress_bar=progress_bar,
        )
