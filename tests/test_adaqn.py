"""AdaQN (agents/adaqn.py): the selection rule against literal references, each network's step against
torch's Adam, acting, seeds, exact resume, config errors, the CLI and a compare sweep."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from agents import dqn
from agents.adaqn import AdaQN, AdaQNetwork, member_epsilon, member_seed, select_member
from agents.dqn import DQNAgent, DQNConfig, train
from agents.replay_buffer import TorchReplayBatch
from alrao_rl.checkpoint import load_checkpoint

TINY = {"env": "CartPole-v1", "method": "adaqn", "hidden": (32, 32), "total_steps": 600, "learning_starts": 100,
        "eval_every": 300, "eval_episodes": 2, "buffer_size": 1000, "adaqn_window": 10}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _batch(rewards: list[float], obs_dim: int = 2, seed: int = 0) -> TorchReplayBatch:
    g = torch.Generator().manual_seed(seed)
    n = len(rewards)
    return TorchReplayBatch(torch.randn(n, obs_dim, generator=g), torch.randint(0, 2, (n,), generator=g),
                            torch.tensor(rewards), torch.randn(n, obs_dim, generator=g), torch.zeros(n))


def _huber(x: float) -> float:
    return 0.5 * x * x if abs(x) <= 1 else abs(x) - 0.5


# --- the selection rule ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sums", "current", "expected"),
    [
        ([3.0, 1.0, 2.0], 0, 1),
        ([2.0, 1.0, 1.0], 0, 1),  # a tie: the first
        ([math.nan, 2.0, 3.0], 0, 1),  # a diverged network is never selected
        ([math.inf, math.nan, 5.0], 0, 2),
        ([math.nan, math.inf], 1, 1),  # none finite: the selection stays
    ],
)
def test_select_member_is_the_argmin_of_the_finite_sums(sums: list[float], current: int, expected: int) -> None:
    assert select_member(torch.tensor(sums, dtype=torch.float64), current) == expected


def test_selection_takes_the_loss_summed_over_the_window_not_the_last_one() -> None:
    net = AdaQNetwork([nn.Linear(1, 1) for _ in range(3)])
    assert not net.record(torch.tensor([1.0, 5.0, 3.0]), window=2)  # the first step's argmin would be 0
    assert int(net.selected) == 0 and net.window_loss.tolist() == [1.0, 5.0, 3.0]
    assert net.record(torch.tensor([4.5, 0.5, 1.0]), window=2)  # the last step's would be 1; sums 5.5, 5.5, 4
    assert int(net.selected) == 2 and net.selections.tolist() == [0, 0, 1]
    assert net.window_loss.tolist() == [0.0, 0.0, 0.0] and int(net.window_steps) == 0  # a new window
    net.record(torch.tensor([0.0, 9.0, 9.0]), window=2)
    net.record(torch.tensor([0.0, 9.0, 9.0]), window=2)
    assert int(net.selected) == 0 and net.selections.tolist() == [1, 0, 1]


def test_hand_computed_td_losses_select_a_network_and_the_target_follows_it_only() -> None:
    """Q_k(s, a) = c_k = 0, 2, 5 and gamma = 0 (y = r): rewards 0 give Huber losses 0, 1.5, 4.5, rewards 5
    give 4.5, 2.5, 0; over a window of the two steps the sums are 4.5, 4, 4.5, so network 1 is selected
    though it was best at neither step. Until then the target moves towards network 0, then towards 1."""
    tau = 0.1
    adaqn = AdaQN(lambda: nn.Linear(2, 2), rates=(1e-7, 1e-7, 1e-7), seed=0, window=2, tau=tau, gamma=0.0,
                  total_steps=100)
    with torch.no_grad():
        for member, c in zip(adaqn.online.members, (0.0, 2.0, 5.0), strict=True):
            member.weight.zero_()
            member.bias.fill_(c)
        adaqn.target.weight.zero_()
        adaqn.target.bias.copy_(torch.tensor([7.0, -3.0]))
    targets = [[p.detach().clone() for p in adaqn.target.parameters()]]
    expected = {0.0: [_huber(0 - 0), _huber(2 - 0), _huber(5 - 0)], 5.0: [_huber(0 - 5), _huber(2 - 5), _huber(5 - 5)]}
    members_after = []
    for step, reward in enumerate((0.0, 5.0)):
        losses = adaqn.train_step(_batch([reward] * 8, seed=step))
        torch.testing.assert_close(losses, torch.tensor(expected[reward]), atol=1e-4, rtol=0)
        members_after.append([[p.detach().clone() for p in m.parameters()] for m in adaqn.online.members])
        targets.append([p.detach().clone() for p in adaqn.target.parameters()])
    assert adaqn.selected == 1 and adaqn.online.selections.tolist() == [0, 1, 0]
    for step, followed in ((0, 0), (1, 1)):  # step 1 still follows network 0; step 2 selects 1, then moves
        for k in range(3):
            moved = [torch.lerp(t, p, tau) for t, p in zip(targets[step], members_after[step][k], strict=True)]
            same = all(torch.equal(a, b) for a, b in zip(moved, targets[step + 1], strict=True))
            assert same == (k == followed), (step, k)


# --- each network's step -------------------------------------------------------------------------------


def test_each_network_takes_a_plain_adam_dqn_step_at_its_rate() -> None:
    """Network k of AdaQN, step after step, is a plain Adam DQN agent at rate eta_k that starts from its weights
    and is given AdaQN's target before each step: the same weights and Adam state, bit for bit."""
    rates = (1e-4, 1e-3, 1e-2)
    config = DQNConfig(method="adaqn", hidden=(32, 32), adaqn_rates=rates, adaqn_window=2)
    agent = DQNAgent(4, 2, config)
    assert agent.adaqn is not None
    plain = []
    for k, rate in enumerate(rates):
        single = DQNAgent(4, 2, DQNConfig(method="adam", lr=rate, hidden=(32, 32)))
        single.q_net.load_state_dict(agent.q_net.members[k].state_dict())
        plain.append(single)
    for step in range(5):  # (selections at steps 2 and 4: the target changes whom it follows)
        batch = _batch([float(step - 2)] * 16, obs_dim=4, seed=step)
        expected_losses = []
        for single in plain:
            single.target_net.load_state_dict(agent.target_net.state_dict())
            expected_losses.append(single.train_step(batch))
        losses = agent.adaqn.train_step(batch)
        assert losses.tolist() == pytest.approx(expected_losses, rel=1e-6)
        for k, single in enumerate(plain):
            mine, theirs = agent.q_net.members[k].parameters(), single.q_net.parameters()
            for a, b in zip(mine, theirs, strict=True):
                assert torch.equal(a, b), (step, k)
                assert torch.equal(agent.optimizer.state[a]["exp_avg_sq"], single.optimizer.state[b]["exp_avg_sq"])
        assert [g["lr"] for g in agent.optimizer.param_groups] == list(rates)


def test_networks_start_from_their_own_seeded_generators() -> None:
    four = DQNAgent(4, 2, DQNConfig(method="adaqn", hidden=(32, 32), seed=3))
    two = DQNAgent(4, 2, DQNConfig(method="adaqn", hidden=(32, 32), seed=3, adaqn_rates=(1e-3, 1e-2)))
    other_seed = DQNAgent(4, 2, DQNConfig(method="adaqn", hidden=(32, 32), seed=4))
    first = [m[0][0].weight for m in four.q_net.members]
    assert all(not torch.equal(first[i], first[j]) for i in range(4) for j in range(i))  # four different inits
    for k in range(2):  # network k's init depends on (seed, k) only
        assert torch.equal(two.q_net.members[k][0][0].weight, first[k])
        assert not torch.equal(other_seed.q_net.members[k][0][0].weight, first[k])
    with torch.random.fork_rng():
        torch.manual_seed(member_seed(3, 1))
        expected = nn.Linear(4, 32).weight  # the MLP's first layer, built under network 1's seed
    assert torch.equal(first[1], expected)
    assert torch.equal(four.target_net[0][0].weight, first[0])  # the target starts as network 0, selected first


# --- acting --------------------------------------------------------------------------------------------


def _one_hot_agent(selected: int, total_steps: int = 1000) -> DQNAgent:
    """Three networks whose Q-values are one-hot at their own index: network k's greedy action is k."""
    agent = DQNAgent(2, 3, DQNConfig(method="adaqn", hidden=(8, 8), adaqn_rates=(1e-3, 1e-3, 1e-3),
                                     total_steps=total_steps))
    with torch.no_grad():
        for k, member in enumerate(agent.q_net.members):
            for p in member.parameters():
                p.zero_()
            member[1].bias[k] = 1.0
        agent.q_net.selected.fill_(selected)
    return agent


def test_greedy_actions_and_evaluation_use_the_selected_network() -> None:
    for s in range(3):
        agent = _one_hot_agent(s)
        assert agent.greedy_action(np.zeros(2, dtype=np.float32)) == s
        torch.testing.assert_close(agent.q_values(torch.zeros(1, 2)), torch.eye(3)[s : s + 1])


def test_behaviour_follows_the_selected_network_or_with_epsilon_b_a_uniformly_drawn_one() -> None:
    """The authors' rule, replayed with a copy of the agent's generator: u ~ U[0, 1); network drawn uniformly if
    u < epsilon_b(t) (1 -> 0.01 linearly over the run), else the selected one."""
    total = 1000
    agent = _one_hot_agent(2, total)
    assert agent.adaqn is not None
    reference = np.random.default_rng()
    reference.bit_generator.state = agent.adaqn.rng.bit_generator.state
    steps = [t for t in range(0, total + 200, 2)]
    actions = [agent.behaviour_action(np.zeros(2, dtype=np.float32), t) for t in steps]
    expected = []
    for t in steps:
        eps_b = 1.0 + (0.01 - 1.0) * min(t / total, 1.0)
        expected.append(int(reference.integers(3)) if reference.random() < eps_b else 2)
    assert actions == expected
    assert member_epsilon(0, total) == 1.0 and member_epsilon(total, total) == pytest.approx(0.01)
    early, late = actions[:50], actions[-100:]
    assert {0, 1, 2} <= set(early) and late.count(2) >= 95  # at first any network acts; at the end the selected


# --- runs -------------------------------------------------------------------------------------------------


def test_same_seed_same_run() -> None:
    a = train(DQNConfig(**TINY), None, progress=False)
    b = train(DQNConfig(**TINY), None, progress=False)
    for key in ("final_eval_return_mean", "episodes", "adaqn"):
        assert a[key] == b[key], key
    assert sum(a["adaqn"]["selections"]) == (600 - 100) // 4 // 10  # one selection per window of 10 updates


@contextlib.contextmanager
def _stop_after(episodes: int) -> Iterator[dict[str, bool]]:
    """Stands for :func:`alrao_rl.checkpoint.stop_requests`: a stop asked at the end of episode ``episodes + 1``
    (the loop reads the request twice at each episode's end)."""

    class Request(dict):
        reads = 0

        def __getitem__(self, key: str) -> bool:
            self.reads += 1
            return self.reads > 2 * episodes

    yield Request(stop=False)


def test_a_stopped_then_resumed_run_equals_the_uninterrupted_run(tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = DQNConfig(**{**TINY, "total_steps": 800, "eval_every": 400})
    whole = train(config, str(tmp_path / "whole"), progress=False)
    with monkeypatch.context() as patch:
        patch.setattr(dqn, "stop_requests", lambda what: _stop_after(12))
        stopped = train(config, str(tmp_path / "part"), progress=False)
    assert stopped["interrupted"] and 100 < stopped["total_steps"] < 800
    resumed = train(config, str(tmp_path / "part"), resume=True, progress=False)
    a, b = (load_checkpoint(tmp_path / d / "checkpoint.pt")["agent"] for d in ("whole", "part"))
    for net in ("q_net", "target_net"):
        for key, value in a[net].items():
            assert torch.equal(value, b[net][key]), (net, key)
    assert a["member_rng"] == b["member_rng"]
    assert resumed["adaqn"] == whole["adaqn"] and resumed["final_eval_return_mean"] == whole["final_eval_return_mean"]
    assert (tmp_path / "whole" / "evals.csv").read_text() == (tmp_path / "part" / "evals.csv").read_text()


def test_run_dqn_method_adaqn_writes_its_selection_and_its_policy_loads(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from agents.saved_policy import load_policy
    from alrao_cli.run_dqn import main

    logdir = tmp_path / "run"
    argv = ["--method", "adaqn", "--env", "CartPole-v1", "--total-steps", "600", "--learning-starts", "100",
            "--eval-every", "600", "--eval-episodes", "1", "--buffer-size", "1000", "--hidden", "32", "32",
            "--adaqn-rates", "1e-4", "1e-3", "--adaqn-window", "25", "--no-progress", "--logdir", str(logdir)]
    assert main(argv) == 0
    summary = json.loads((logdir / "summary.json").read_text())
    adaqn = summary["adaqn"]
    assert summary["method"] == "adaqn" and summary["lr"] is None and adaqn["rates"] == [1e-4, 1e-3]
    assert adaqn["window"] == 25 and sum(adaqn["selections"]) == 5  # 125 updates
    assert adaqn["selected_lr"] == adaqn["rates"][adaqn["selected"]]
    scalars = EventAccumulator(str(logdir)).Reload().Scalars("adaqn/selected")
    assert [e.step for e in scalars] == [500] and scalars[0].value == adaqn["selected"]  # every 100 updates
    policy = load_policy(str(logdir))
    agent = DQNAgent(4, 2, DQNConfig(**{**summary["config"], "hidden": (32, 32)}))
    agent.load_state_dict(load_checkpoint(logdir / "checkpoint.pt")["agent"])
    obs = np.array([0.01, -0.2, 0.03, 0.3], dtype=np.float32)
    assert policy.greedy_action(obs) == agent.greedy_action(obs)
    assert f"network {adaqn['selected']}" in policy.description


# --- errors ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("values", "error", "match"),
    [
        ({"method": "adaqn", "lr": 1e-3}, ValueError, r"method 'adaqn' .* takes no lr, got 0.001"),
        ({"adaqn_rates": ()}, ValueError, r"adaqn_rates must be one or more finite numbers > 0, got \[\]"),
        ({"adaqn_rates": (1e-3, 0.0)}, ValueError, r"adaqn_rates must be .* > 0, got \[0.001, 0.0\]"),
        ({"adaqn_rates": (1e-3, math.nan)}, ValueError, r"adaqn_rates must be .*, got \[0.001, nan\]"),
        ({"adaqn_rates": ("fast",)}, TypeError, r"adaqn_rates must be a sequence of numbers, got \('fast',\)"),
        ({"adaqn_rates": 1e-3}, TypeError, r"adaqn_rates must be a sequence of numbers, got 0.001"),
        ({"adaqn_window": 0}, ValueError, r"adaqn_window must be >= 1, got 0"),
    ],
)
def test_bad_adaqn_settings_are_refused_naming_the_field(values: dict[str, Any], error: type[Exception],
                                                         match: str) -> None:
    with pytest.raises(error, match=match):
        DQNConfig(**values)


def test_adaqn_trains_alone_not_in_a_population_nor_with_a_replaced_optimizer() -> None:
    from agents.population import PopulationDQN

    with pytest.raises(ValueError, match="method 'adaqn' cannot train as a population"):
        PopulationDQN([DQNConfig(**TINY, seed=0), DQNConfig(**TINY, seed=1)])
    with pytest.raises(ValueError, match="'adaqn' has its own"):
        DQNAgent(4, 2, DQNConfig(**TINY), optimizer_factory=lambda params: torch.optim.SGD(params, lr=0.1))


def test_a_checkpoint_from_before_adaqn_existed_resumes(tmp_path: Path) -> None:
    from alrao_rl.checkpoint import save_checkpoint

    config = DQNConfig(env="CartPole-v1", method="adam", hidden=(32, 32), total_steps=300, learning_starts=100,
                       eval_every=300, eval_episodes=1, buffer_size=1000)
    train(config, str(tmp_path), progress=False)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    for name in ("adaqn_rates", "adaqn_window"):
        del saved["config"][name]
    save_checkpoint(tmp_path / "checkpoint.pt", saved)
    longer = dataclasses.replace(config, total_steps=400)
    assert train(longer, str(tmp_path), resume=True, progress=False)["total_steps"] == 400


# --- compare -------------------------------------------------------------------------------------------


def test_a_tiny_compare_sweep_with_adaqn_reports_its_row(tmp_path: Path) -> None:
    from agents import compare
    from alrao_cli.compare import main as compare_main

    out = tmp_path / "sweep"
    argv = ["--env", "CartPole-v1", "--seeds", "1", "--total-steps", "400", "--methods", "adam,adaqn",
            "--eval-every", "400", "--eval-episodes", "1", "--test-episodes", "2", "--learning-starts", "100",
            "--floor-episodes", "3", "--workers", "1", "--no-progress", "--out", str(out)]
    assert compare_main(argv) == 0
    report = (out / "report.md").read_text()
    assert "| AdaQN | {1e-5, 1e-4, 1e-3, 1e-2}, 4 nets |" in report
    assert "AdaQN: one network per Adam rate" in report
    rows = (out / "results.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["adam", "adaqn"]
    summary = json.loads((out / "runs" / "adaqn" / "seed0" / "summary.json").read_text())
    assert summary["method"] == "adaqn" and summary["adaqn"]["rates"] == [1e-5, 1e-4, 1e-3, 1e-2]
    assert not any((out / "runs" / "populations").glob("*/checkpoint.pt"))
    spec = compare.plan_runs("rl", "CartPole-v1", ["adaqn"], [0])[0]
    assert not compare.runs.population_member(spec) and compare.dqn_config(spec).method == "adaqn"
    with pytest.raises(ValueError, match="method 'adaqn' is a DQN method: it needs task 'rl', not 'cifar'"):
        compare.plan_runs("cifar", "cifar10", ["alrao", "adaqn"], [0])
