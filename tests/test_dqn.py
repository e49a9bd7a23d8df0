"""DQN: helpers against their formulas, the Alrao target protection, outputs, resume, CLI errors."""

from __future__ import annotations

import csv
import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from torch import nn

from agents.dqn import ALRAO_SGD, DQNAgent, DQNConfig, linear_schedule, soft_update, td_target, train
from agents.replay_buffer import TorchReplayBatch
from alrao_rl.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "env": "CartPole-v1",
    "total_steps": 600,
    "learning_starts": 100,
    "eval_every": 300,
    "eval_episodes": 2,
    "buffer_size": 1000,
}


def test_linear_schedule_is_the_formula() -> None:
    assert linear_schedule(1.0, 0.05, 100, 0) == 1.0
    assert linear_schedule(1.0, 0.05, 100, 50) == pytest.approx(0.525)
    assert linear_schedule(1.0, 0.05, 100, 1000) == pytest.approx(0.05)
    assert linear_schedule(1.0, 0.05, 0, 5) == 0.05


def test_td_target_bootstraps_unless_terminated() -> None:
    r, d, q = torch.tensor([1.0, 2.0]), torch.tensor([0.0, 1.0]), torch.tensor([10.0, 10.0])
    torch.testing.assert_close(td_target(r, d, q, 0.9), torch.tensor([10.0, 2.0]))


def test_soft_update_is_polyak_averaging() -> None:
    online, target = nn.Linear(3, 2), nn.Linear(3, 2)
    expected = [
        (1 - 0.1) * t.detach() + 0.1 * o.detach() for t, o in zip(target.parameters(), online.parameters(), strict=True)
    ]
    soft_update(list(target.parameters()), list(online.parameters()), 0.1)
    for p, e in zip(target.parameters(), expected, strict=True):
        torch.testing.assert_close(p, e)


def _batch(n: int = 32, obs_dim: int = 3, n_actions: int = 5, seed: int = 0) -> TorchReplayBatch:
    g = torch.Generator().manual_seed(seed)
    return TorchReplayBatch(
        torch.randn(n, obs_dim, generator=g),
        torch.randint(0, n_actions, (n,), generator=g),
        -torch.rand(n, generator=g) * 10,
        torch.randn(n, obs_dim, generator=g),
        torch.zeros(n),
    )


@pytest.mark.parametrize("averaging,poisoned", [("filtered", False), ("predictive", True)])
def test_one_diverging_head_cannot_push_the_td_targets_of_the_others(averaging: str, poisoned: bool) -> None:
    agent = DQNAgent(3, 5, DQNConfig(averaging=averaging, seed=0, max_weight=None, **ALRAO_SGD))
    for step in range(20):
        agent.train_step(_batch(seed=step))
    with torch.no_grad():  # head 9 (rate 10) blows up in the online network...
        agent.q_net.heads.bias[9] = 1e30
    agent.train_step(_batch(seed=98))  # ...the switch sees it, and the optimizer freezes it (at 0)...
    assert agent.q_net.switch.filtered_posterior[9] == 0 and torch.all(agent.q_net.heads.bias[9] == 0)
    with torch.no_grad():  # ...but the target network lags behind: it still holds the diverged head
        agent.target_net.heads.bias[9] = 1e30
    batch = _batch(seed=99)
    targets = agent.target_q_values(batch.next_observations)
    lw = agent.q_net.averaging_log_weights().clone()
    lw[9] = -math.inf
    lw -= torch.logsumexp(lw, 0)
    net = agent.target_net
    without_head_9 = net.output(net.body(batch.next_observations), log_weights=lw).prediction
    if poisoned:  # the predictive posterior's floor on head 9 moves every target by ~1e28/(tN)
        assert targets.abs().max() > 1e20
    else:
        torch.testing.assert_close(targets, without_head_9)
        assert targets.abs().max() < 1e3


def test_alrao_train_step_updates_heads_switch_and_target() -> None:
    agent = DQNAgent(3, 5, DQNConfig(seed=0))
    before = agent.target_net.heads.weight.clone()
    steps = int(agent.q_net.switch.steps)
    loss = agent.train_step(_batch())
    assert math.isfinite(loss) and int(agent.q_net.switch.steps) == steps + 1
    assert not torch.equal(agent.target_net.heads.weight, before)


@pytest.mark.parametrize("method,lr", [("alrao", None), ("adam", None), ("sgd", 1e-3)])
def test_train_writes_evals_summary_and_tensorboard(tmp_path: Path, method: str, lr: float | None) -> None:
    summary = train(DQNConfig(method=method, lr=lr, **TINY), str(tmp_path), progress=False)
    with open(tmp_path / "evals.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["step", "eval_return_mean", "eval_return_std"] and [r[0] for r in rows[1:]] == ["300", "600"]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    keys = {
        "env",
        "method",
        "lr",
        "eta_min",
        "eta_max",
        "heads",
        "seed",
        "total_steps",
        "final_eval_return_mean",
        "final_eval_return_std",
        "best_eval_return_mean",
        "wall_seconds",
        "steps_per_second",
    }
    assert keys <= set(on_disk) and on_disk["method"] == method and on_disk == json.loads(json.dumps(summary))
    assert any(name.startswith("events.out.tfevents") for name in os.listdir(tmp_path))
    assert (tmp_path / "checkpoint.pt").exists()


def test_resuming_a_finished_run_keeps_its_results_and_speed(tmp_path: Path) -> None:
    first = train(DQNConfig(**TINY), str(tmp_path), progress=False)
    again = train(DQNConfig(**TINY), str(tmp_path), resume=True, progress=False)
    assert again["final_eval_return_mean"] == first["final_eval_return_mean"]
    assert again["steps_per_second"] == pytest.approx(first["steps_per_second"], rel=0.05)
    assert json.loads((tmp_path / "summary.json").read_text()) == json.loads(json.dumps(again))


def test_same_seed_same_run() -> None:
    a = train(DQNConfig(**TINY), None, progress=False)
    b = train(DQNConfig(**TINY), None, progress=False)
    assert a["final_eval_return_mean"] == b["final_eval_return_mean"] and a["episodes"] == b["episodes"]


def _script(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "run_dqn.py"), "--no-progress", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_interrupted_then_resumed_run_equals_the_uninterrupted_run(tmp_path: Path) -> None:
    common = [
        "--env",
        "CartPole-v1",
        "--total-steps",
        "3000",
        "--learning-starts",
        "200",
        "--eval-every",
        "1000",
        "--eval-episodes",
        "2",
        "--checkpoint-every",
        "500",
        "--buffer-size",
        "5000",
    ]
    full = _script(*common, "--logdir", str(tmp_path / "full"))
    part = _script(*common, "--logdir", str(tmp_path / "part"))
    ckpt = tmp_path / "part" / "checkpoint.pt"
    deadline = time.time() + 60
    while not ckpt.exists() and part.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    part.send_signal(signal.SIGINT)
    assert part.wait(60) == 130, part.stderr.read()  # 128 + SIGINT: stopped, not finished (0)
    saved = load_checkpoint(ckpt)
    assert 0 < saved["progress"]["step"] < 3000
    resumed = _script(*common, "--logdir", str(tmp_path / "part"), "--resume")
    assert resumed.wait(120) == 0, resumed.stderr.read()
    assert full.wait(120) == 0, full.stderr.read()
    a, b = load_checkpoint(tmp_path / "full" / "checkpoint.pt"), load_checkpoint(ckpt)
    for key, value in a["agent"]["q_net"].items():
        assert torch.equal(value, b["agent"]["q_net"][key]), key
    assert (tmp_path / "full" / "evals.csv").read_text() == (tmp_path / "part" / "evals.csv").read_text()


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--eta-min", "0"], "--eta-min must be a finite number > 0, got 0.0"),
        (["--eta-min", "1", "--eta-max", "0.1"], "--eta-min must be <= --eta-max"),
        (["--heads", "0"], "--heads must be >= 1, got 0"),
        (["--env", "Nope-v0"], "Unknown environment id 'Nope-v0'"),
        (["--total-steps", "-5"], "--total-steps must be >= 1, got -5"),
        (["--heads", "abc"], "invalid int value: 'abc'"),
        (["--alrao", "--optimizer", "sgd"], "not allowed with argument --alrao"),
        (["--optimizer", "sgd"], "method 'sgd' needs a learning rate"),
        (["--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
        (["--gamma", "1.5"], "--gamma must be in [0, 1], got 1.5"),
    ],
)
def test_bad_flags_exit_2_with_one_line(argv: list[str], message: str, tmp_path: Path, capsys) -> None:
    from alrao_cli.run_dqn import main

    with pytest.raises(SystemExit) as exc:
        main([*argv, "--logdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_logdir_that_is_a_file_or_holds_a_run_is_refused(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    proc = _script("--logdir", str(a_file))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "is a file" in err and "Traceback" not in err and len(err.splitlines()) == 1
    assert a_file.read_text() == "keep me"
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    proc = _script("--logdir", str(run))
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2 and "already holds a run" in err and (run / "summary.json").read_text() == "{}"


def test_a_run_saved_before_head_step_existed_resumes_with_plain_steps(tmp_path: Path) -> None:
    """Versioned migration: a checkpoint whose config has no head_step (and whose heads have no
    dead_features buffer) was trained with plain head steps, and resumes as such."""
    from alrao_rl.checkpoint import CheckpointError, load_checkpoint, save_checkpoint

    config = DQNConfig(env="CartPole-v1", total_steps=300, learning_starts=100, eval_every=300, eval_episodes=1,
                       checkpoint_every=100, head_step="plain")
    train(config, str(tmp_path), progress=False)
    saved = load_checkpoint(tmp_path / "checkpoint.pt")
    del saved["config"]["head_step"]
    for net in ("q_net", "target_net"):
        del saved["agent"][net]["heads.dead_features"]
    save_checkpoint(tmp_path / "checkpoint.pt", saved)
    longer = {**vars(config), "total_steps": 400}
    with pytest.raises(CheckpointError, match="head_step: saved='plain' current='normalized'"):
        train(DQNConfig(**{**longer, "head_step": "normalized"}), str(tmp_path), resume=True, progress=False)
    summary = train(DQNConfig(**longer), str(tmp_path), resume=True, progress=False)
    assert summary["total_steps"] == 400


def test_alrao_optimizer_chooses_alrao_adam_and_a_bad_one_is_refused() -> None:
    from alrao_rl import AlraoAdam

    agent = DQNAgent(4, 2, DQNConfig(env="CartPole-v1", alrao_optimizer="adam", eta_min=1e-6, eta_max=1.0))
    assert isinstance(agent.optimizer, AlraoAdam)
    rates = torch.cat([s["alrao_rate"].flatten() for s in agent.optimizer.state.values()])
    assert float(rates.min()) >= 1e-6 * (1 - 1e-6) and float(rates.max()) <= 1.0 + 1e-6
    with pytest.raises(ValueError, match="alrao_optimizer must be one of"):
        DQNConfig(alrao_optimizer="rmsprop")


def test_an_agent_with_popart_and_alrao_adam_restores_its_scale_and_q_values() -> None:
    """The agent's state (checkpoints, --resume) carries PopArt's scale: a restored agent's Q-values, mapped
    back with it, equal the original's; without the scale they would be off by the factor s."""
    config = DQNConfig(env="CartPole-v1", value_norm="popart", alrao_optimizer="adam", eta_min=1e-6, eta_max=1.0)
    agent = DQNAgent(4, 2, config)
    gen = torch.Generator().manual_seed(0)
    obs = torch.randn(32, 4, generator=gen)
    batch = TorchReplayBatch(obs, torch.randint(0, 2, (32,), generator=gen), 50.0 + torch.randn(32, generator=gen),
                             torch.randn(32, 4, generator=gen), torch.zeros(32))
    for _ in range(5):
        agent.train_step(batch)
    assert float(agent.popart.scale[0]) > 10.0
    restored = DQNAgent(4, 2, config)
    restored.load_state_dict(agent.state_dict())
    assert torch.equal(restored.q_values(obs), agent.q_values(obs))
