"""AlraoSAC / AlraoTD3: SB3's SAC and TD3 with Alrao critics (agents.sb3.critic).

The critics' model with members is checked against a literal reference, one critic at a time (an
``AlraoModel`` with an ``nn.Sequential`` body, ``model.loss`` + ``backward`` + ``AlraoSGD.step`` + switch
update); then the algorithms inside SB3's machinery: initial weights, save/load, misuse, learning rates,
VecEnvs, callbacks, logging; one slow learning check (``pytest -m slow``).
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np
import pytest
import torch
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.env_util import make_vec_env
from stable_baselines3.common.evaluation import evaluate_policy
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import nn

from agents.sb3 import AlraoContinuousCritic, AlraoSAC, AlraoTD3
from agents.sb3.critic import CriticTrainer
from agents.stacked import StackedLinear
from alrao_rl import AlraoAdam, AlraoModel, AlraoSGD, RunningVariance

FAST: dict[str, Any] = {"learning_starts": 50, "batch_size": 32, "buffer_size": 2000, "device": "cpu"}
POLICY: dict[str, Any] = {"net_arch": [32, 32], "n_heads": 5}
ALGOS = [(AlraoSAC, SAC), (AlraoTD3, TD3)]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _model(cls: type, seed: int = 0, env: Any = "Pendulum-v1", **kwargs: Any) -> Any:
    policy_kwargs = {**POLICY, **kwargs.pop("policy_kwargs", {})}
    return cls("MlpPolicy", env, seed=seed, policy_kwargs=policy_kwargs, **{**FAST, **kwargs})


def _single_critic(critic: AlraoContinuousCritic, k: int) -> tuple[AlraoModel, AlraoSGD]:
    """Critic ``k`` as a model without members (nn.Linear body) and its AlraoSGD with member k's rates."""
    model = critic.q_model
    layers: list[nn.Module] = []
    for m in model.body:
        if isinstance(m, StackedLinear):
            linear = nn.Linear(m.weight.shape[2], m.weight.shape[1]).double()
            with torch.no_grad():
                linear.weight.copy_(m.weight[k])
                linear.bias.copy_(m.bias[k])
            layers.append(linear)
        else:
            layers.append(type(m)())
    head = nn.Linear(model.heads.in_features, 1).double()
    single = AlraoModel(nn.Sequential(*layers), head, model.n_heads, "regression", averaging=model.averaging)
    with torch.no_grad():
        single.heads.weight.copy_(model.heads.weight[k])
        single.heads.bias.copy_(model.heads.bias[k])
    opt = AlraoSGD(single, critic.optimizer.defaults["eta_min"], critic.optimizer.defaults["eta_max"], seed=0)
    for mine, theirs in zip(single.parameters(), model.parameters(), strict=True):
        opt.state[mine]["alrao_rate"] = critic.optimizer.state[theirs]["alrao_rate"][k].clone()
    return single, opt


def test_critics_start_as_sb3_critics() -> None:
    """Same seed: every member's body and every head copy equal SB3's critic k."""
    for cls, base in ALGOS:
        ours = _model(cls, seed=3)
        theirs = base("MlpPolicy", "Pendulum-v1", seed=3, policy_kwargs={"net_arch": [32, 32]}, **FAST)
        model = ours.critic.q_model
        for k, q_net in enumerate(theirs.critic.q_networks):
            linears = [m for m in q_net if isinstance(m, nn.Linear)]
            stacked = [m for m in model.body if isinstance(m, StackedLinear)]
            for s, lin in zip(stacked, linears[:-1], strict=True):
                assert torch.equal(s.weight[k], lin.weight) and torch.equal(s.bias[k], lin.bias)
            assert torch.equal(model.heads.weight[k], linears[-1].weight.expand(model.n_heads, -1, -1))
            assert torch.equal(model.heads.bias[k], linears[-1].bias.expand(model.n_heads, -1))
        # and the actors too (the critics consumed the generator as SB3's do)
        for a, b in zip(ours.actor.parameters(), theirs.actor.parameters(), strict=True):
            assert torch.equal(a, b)


def _literal_q(single: AlraoModel, obs: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    """``sum_j a_j (W_j z + b_j)``, one head at a time."""
    z = single.body(torch.cat([obs, actions], dim=1))
    a = single.averaging_log_weights().exp()
    return sum(a[j] * (z @ single.heads.weight[j].T + single.heads.bias[j]) for j in range(single.n_heads))


def test_forward_is_each_critics_switch_average_and_differentiable_in_the_actions() -> None:
    model = _model(AlraoSAC)
    critic = model.critic.double()
    obs = torch.randn(7, 3).double()  # (SB3 casts observations to float32)
    actions = torch.randn(7, 1, dtype=torch.float64, requires_grad=True)
    qs = critic(obs, actions)
    assert len(qs) == 2 and all(q.shape == (7, 1) for q in qs)
    grads = torch.autograd.grad(qs[0].sum() + 2 * qs[1].sum(), actions)[0]
    ref_actions = actions.detach().clone().requires_grad_(True)
    refs = [_literal_q(_single_critic(critic, k)[0], obs, ref_actions) for k in range(2)]
    for q, ref in zip(qs, refs, strict=True):
        torch.testing.assert_close(q, ref, rtol=1e-12, atol=1e-12)
    ref_grads = torch.autograd.grad(refs[0].sum() + 2 * refs[1].sum(), ref_actions)[0]
    torch.testing.assert_close(grads, ref_grads, rtol=1e-12, atol=1e-12)
    # TD3's actor: the first critic alone, from its own weights (also with a dead feature), same value and gradient
    critic.q_model.heads.mark_dead_features(torch.tensor([[True] + [False] * 31, [False] * 32]))
    q0 = critic(obs, actions)[0]
    q1 = critic.q1_forward(obs, actions)
    torch.testing.assert_close(q1, q0, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(torch.autograd.grad(q1.sum(), actions)[0], torch.autograd.grad(q0.sum(), actions)[0],
                               rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("td_variance", ["running", "unit"])
def test_critic_step_is_algorithm_1_for_each_critic(td_variance: str) -> None:
    """Five fused steps of both critics equal, critic by critic, the literal loss-backward-step-switch path."""
    model = _model(AlraoSAC)
    critic = model.critic.double()
    critic.optimizer = AlraoSGD(critic.q_model, 1e-3, 1.0, seed=0)
    singles = [_single_critic(critic, k) for k in range(2)]
    trainer = CriticTrainer(critic, critic.optimizer, td_variance)
    variances = [RunningVariance() for _ in range(2)]
    gen = torch.Generator().manual_seed(0)
    for _ in range(5):
        obs = torch.randn(16, 3, generator=gen).double()  # (SB3 casts observations to float32)
        actions = torch.rand(16, 1, generator=gen, dtype=torch.float64) * 2 - 1
        target = torch.randn(16, 1, generator=gen, dtype=torch.float64) * 3
        result = trainer(obs, actions, target)
        for k, (single, opt) in enumerate(singles):
            out = single(torch.cat([obs, actions], dim=1))
            var = 1.0
            if td_variance == "running":
                var = variances[k].update(float(((out.prediction - target) ** 2).mean()))
            loss, head_ll = single.loss(out, target, variance=var)
            assert loss.item() == pytest.approx(float(result.loss[k]), rel=1e-10)
            opt.zero_grad()
            loss.backward()
            opt.step()
            single.switch.update(head_ll)
    for k, (single, _) in enumerate(singles):
        again, _ = _single_critic(critic, k)
        for mine, theirs in zip(single.parameters(), again.parameters(), strict=True):
            torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(single.switch.log_filtered.numpy(), critic.q_model.switch.log_filtered[k].numpy(),
                                   rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("cls", [AlraoSAC, AlraoTD3])
def test_save_load_restores_rates_heads_variances_and_predicts_identically(cls: type, tmp_path: pathlib.Path) -> None:
    model = _model(cls, td_variance="running")
    model.learn(300)
    # a frozen unit must survive the round trip
    p = next(iter(model.critic.q_model.body.parameters()))
    with torch.no_grad():
        model.critic.optimizer.state[p]["alrao_rate"][0, 0] = 0.0
    model.save(tmp_path / "m")
    loaded = cls.load(tmp_path / "m", env=model.get_env())
    assert loaded.heads_variance == model.heads_variance and all(v is not None for v in model.heads_variance)
    for a, b in zip(model.policy.state_dict().values(), loaded.policy.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    opt_a, opt_b = model.critic.optimizer, loaded.critic.optimizer
    assert isinstance(opt_b, AlraoSGD) and opt_b.frozen_units() == opt_a.frozen_units() >= 1
    for pa, pb in zip(model.critic.q_model.parameters(), loaded.critic.q_model.parameters(), strict=True):
        assert torch.equal(opt_a.state[pa]["alrao_rate"], opt_b.state[pb]["alrao_rate"])
    obs = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], loaded.predict(obs, deterministic=True)[0])


@pytest.mark.parametrize("cls, base", ALGOS)
def test_stock_algorithm_refuses_the_alrao_policy_at_its_first_update(cls: type, base: type) -> None:
    agent = base(cls.policy_aliases["MlpPolicy"], "Pendulum-v1", policy_kwargs=dict(POLICY), **FAST)
    with pytest.raises(TypeError, match=cls.__name__):
        agent.learn(100)


@pytest.mark.parametrize("cls, base", ALGOS)
def test_alrao_algorithm_needs_its_alrao_policy(cls: type, base: type) -> None:
    with pytest.raises(TypeError, match="Policy"):
        cls(base.policy_aliases["MlpPolicy"], "Pendulum-v1", **FAST)


def test_bad_arguments_are_named() -> None:
    with pytest.raises(ValueError, match="td_variance"):
        _model(AlraoSAC, td_variance="huge")
    with pytest.raises(TypeError, match="critic_optimizer_class"):
        _model(AlraoTD3, policy_kwargs={"critic_optimizer_class": torch.optim.Adam})

    class Learned(BaseFeaturesExtractor):
        def __init__(self, observation_space: Any) -> None:
            super().__init__(observation_space, 4)
            self.linear = nn.Linear(3, 4)

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return self.linear(obs)

    with pytest.raises(ValueError, match="features extractor"):
        _model(AlraoSAC, policy_kwargs={"features_extractor_class": Learned})


def test_learning_rate_is_the_actors_and_the_critics_have_none() -> None:
    """SB3 writes ``learning_rate`` into its optimizers before each train(): the critics' Alrao multiplier
    stays 1, the actor's Adam and the entropy coefficient's follow the schedule."""
    model = _model(AlraoSAC, learning_rate=lambda progress: 1e-3 * (1 + progress))
    model.learn(200)
    assert all(g["lr"] == 1.0 for g in model.critic.optimizer.param_groups)
    actor_lr = model.actor.optimizer.param_groups[0]["lr"]
    assert 1e-3 <= actor_lr < 2e-3 and model.ent_coef_optimizer.param_groups[0]["lr"] == actor_lr
    alrao_actor = _model(AlraoTD3, policy_kwargs={"actor_alrao": True, "critic_optimizer_class": AlraoAdam,
                                                  "eta_min": 1e-6, "eta_max": 1.0})
    alrao_actor.learn(200)
    assert isinstance(alrao_actor.actor.optimizer, AlraoAdam) and isinstance(alrao_actor.critic.optimizer, AlraoAdam)
    assert alrao_actor.actor.optimizer.param_groups[0]["lr"] == 1.0


def test_same_seed_same_run() -> None:
    a = _model(AlraoSAC, seed=5)
    a.learn(200)
    b = _model(AlraoSAC, seed=5)  # (SB3 seeds the global generators when it builds a model)
    b.learn(200)
    for x, y in zip(a.policy.state_dict().values(), b.policy.state_dict().values(), strict=True):
        assert torch.equal(x, y)


@pytest.mark.parametrize("cls", [AlraoSAC, AlraoTD3])
def test_vec_envs_callbacks_progress_bar_and_tensorboard_posteriors(cls: type, tmp_path: pathlib.Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    model = _model(cls, env=make_vec_env("Pendulum-v1", n_envs=2, seed=0), tensorboard_log=str(tmp_path))
    calls = []

    class Count(BaseCallback):
        def _on_step(self) -> bool:
            calls.append(self.num_timesteps)
            return True

    model.learn(420, callback=Count(), progress_bar=True, log_interval=1)  # episodes of 200 steps end at 400
    assert calls and calls[-1] >= 420
    (run,) = list(tmp_path.iterdir())
    assert run.name.startswith(cls.__name__)
    events = EventAccumulator(str(run)).Reload()
    tags = set(events.Tags()["scalars"])
    for k in range(2):
        assert f"alrao/critic_{k}/heads_variance" in tags
        weights = [events.Scalars(f"alrao/critic_{k}/posterior/head_{j}")[-1].value for j in range(5)]
        assert sum(weights) == pytest.approx(1.0, abs=1e-5)
    assert "train/critic_loss" in tags
    mean, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=2)
    assert np.isfinite(mean)


@pytest.mark.slow
@pytest.mark.parametrize("cls", [AlraoSAC, AlraoTD3])
def test_learns_pendulum(cls: type) -> None:
    """Default flags, one seed, 12,000 steps: SB3's SAC reaches about -200 on Pendulum-v1 by then."""
    model = cls("MlpPolicy", "Pendulum-v1", seed=0, device="cpu")
    model.learn(12_000)
    mean, _ = evaluate_policy(model, model.get_env(), n_eval_episodes=5)
    assert mean > -400, mean
