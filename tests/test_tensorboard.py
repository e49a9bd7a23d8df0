"""What scripts/run_dqn.py (agents.dqn.train) writes to TensorBoard, read back with TensorBoard's own reader.

The averaging weights of the heads are logged under the tag SB3's AlraoDQN uses too
(``alrao/posterior/head_{j}``, tests/test_sb3.py), with the heads' variance and the frozen-unit count; a
resumed run purges the events its killed predecessor wrote after its last checkpoint.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import agents.dqn
from agents.dqn import DQNAgent, DQNConfig, train
from alrao_rl.checkpoint import load_checkpoint

# Gradient steps from step 101: scalars every 100 updates, at steps 200, 300 and 400 (the last step).
TINY: dict[str, Any] = {"env": "CartPole-v1", "total_steps": 400, "learning_starts": 100, "eval_every": 400,
                        "eval_episodes": 1, "buffer_size": 1000, "heads": 4, "train_freq": 1, "hidden": (64, 64),
                        "batch_size": 64}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def _events(logdir: Path) -> EventAccumulator:
    return EventAccumulator(str(logdir), size_guidance={"scalars": 0}).Reload()


def _final_agent(logdir: Path, config: DQNConfig) -> DQNAgent:
    agent = DQNAgent(4, 2, config)
    agent.load_state_dict(load_checkpoint(logdir / "checkpoint.pt")["agent"])
    return agent


@pytest.fixture(scope="module")
def alrao_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    logdir = tmp_path_factory.mktemp("tb") / "run"
    logdir.mkdir()
    train(DQNConfig(**TINY), str(logdir), progress=False)
    return logdir


def test_the_weights_used_to_average_the_heads_are_logged_as_alrao_posterior_head_j(alrao_run: Path) -> None:
    events = _events(alrao_run)
    agent = _final_agent(alrao_run, DQNConfig(**TINY))
    used = agent.q_net.averaging_log_weights().exp().numpy()  # filtered posterior: the default averaging
    predictive = agent.q_net.switch.posterior.numpy()
    logged = np.array([events.Scalars(f"alrao/posterior/head_{j}")[-1].value for j in range(4)])
    assert [e.step for e in events.Scalars("alrao/posterior/head_0")] == [200, 300, 400]
    np.testing.assert_allclose(logged, used, rtol=1e-5, atol=1e-7)
    assert np.abs(predictive - used).max() > 1e-5  # the predictive posterior would be told apart


def test_the_heads_variance_and_the_frozen_unit_count_are_logged(alrao_run: Path) -> None:
    events = _events(alrao_run)
    agent = _final_agent(alrao_run, DQNConfig(**TINY))
    variance = events.Scalars("alrao/heads_variance")
    frozen = events.Scalars("alrao/frozen_units")
    assert [e.step for e in variance] == [e.step for e in frozen] == [200, 300, 400]
    assert variance[-1].value == pytest.approx(agent.td_variance, rel=1e-6)
    assert frozen[-1].value == agent.optimizer.frozen_units()  # type: ignore[attr-defined]


def test_a_resumed_run_purges_the_events_written_after_its_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As after kill -9: the checkpoint is from step ~200, the events go on to step 400; --resume redoes
    steps 200..400, and each step must be read once, with the resumed run's values."""
    logdir = tmp_path / "run"
    logdir.mkdir()
    config = DQNConfig(**{**TINY, "checkpoint_every": 150})
    real_save = agents.dqn.save_checkpoint
    saved_steps: list[int] = []

    def first_checkpoint_only(path: Any, state: dict[str, Any]) -> None:
        if not saved_steps:
            real_save(path, state)
        saved_steps.append(state["progress"]["step"])

    with monkeypatch.context() as patch:
        patch.setattr(agents.dqn, "save_checkpoint", first_checkpoint_only)
        train(config, str(logdir), progress=False)
    checkpointed = saved_steps[0]
    assert 150 <= checkpointed < 300 and len(saved_steps) > 1
    assert load_checkpoint(logdir / "checkpoint.pt")["progress"]["step"] == checkpointed
    start = time.time()
    while int(time.time()) == int(start):  # event files are ordered by the second they were opened in
        time.sleep(0.05)
    train(config, str(logdir), resume=True, progress=False)

    events = _events(logdir)
    for tag in ("train/loss", "alrao/posterior/head_0", "eval/return_mean"):
        steps = [e.step for e in events.Scalars(tag)]
        assert steps == sorted(set(steps)), (tag, steps)  # no step twice
    losses = events.Scalars("train/loss")
    assert [e.step for e in losses] == [200, 300, 400]
    assert len(list(logdir.glob("events.out.tfevents.*"))) == 2


def test_a_resumed_supervised_run_purges_the_batch_events_written_after_its_last_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same for run_cifar.py / run_ptb.py: checkpoint after epoch 1 only, events of 3 epochs, resumed."""
    import alrao_rl.supervised.train as supervised
    from alrao_rl.supervised.train import TrainConfig, prepare_ptb, train_classifier

    lines = [" the cat sat on the mat ", " a dog ran after the cat ", " the end of the story "] * 20
    for name in ("train", "valid", "test"):
        (tmp_path / f"{name}.txt").write_text("\n".join(lines) + "\n")
    data = prepare_ptb(tmp_path / "train.txt", tmp_path / "valid.txt", tmp_path / "test.txt")
    config = TrainConfig(task="ptb", epochs=3, batch_size=2, bptt=30, log_every=1, heads=2)
    logdir = tmp_path / "run"
    logdir.mkdir()
    real_save = supervised.save_checkpoint
    saved: list[int] = []

    def first_checkpoint_only(path: Any, state: dict[str, Any]) -> None:
        if Path(path).name != "checkpoint.pt":
            real_save(path, state)
        elif not saved:
            real_save(path, state)
            saved.append(state["progress"]["epoch"])

    with monkeypatch.context() as patch:
        patch.setattr(supervised, "save_checkpoint", first_checkpoint_only)
        train_classifier(config, data, logdir, progress=False)
    assert saved == [1]
    start = time.time()
    while int(time.time()) == int(start):  # event files are ordered by the second they were opened in
        time.sleep(0.05)
    train_classifier(config, data, logdir, resume=True, progress=False)
    steps = [e.step for e in _events(logdir).Scalars("train/batch_loss")]
    assert steps == sorted(set(steps)) and len(steps) > 3, steps
