"""compare.py --algo sac|td3: Alrao critics against the critics' Adam rate on a grid and SB3's defaults
(agents.continuous, the grid method ``critic-adam`` in agents.compare)."""

from __future__ import annotations

import csv
import json
import math
import pathlib

import pytest
import torch

from agents import compare
from agents.compare.plan import DEFAULT_CRITIC_GRID
from agents.continuous import ContinuousConfig, make_agent, train
from agents.sb3 import AlraoSAC, AlraoTD3


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


def test_plan_runs_the_critic_grid_once_per_rate_and_only_continuous_methods() -> None:
    specs = compare.plan_runs("sac", "Pendulum-v1", ["alrao", "critic-adam", "adam"], [0, 1], DEFAULT_CRITIC_GRID)
    assert len(specs) == 2 * (2 + len(DEFAULT_CRITIC_GRID))
    assert sorted({s.lr for s in specs if s.method == "critic-adam"}) == list(DEFAULT_CRITIC_GRID)
    config = compare.continuous_config(next(s for s in specs if s.method == "critic-adam"))
    assert config.algo == "sac" and config.lr == DEFAULT_CRITIC_GRID[0]
    assert compare.grid_method("sac") == "critic-adam" and compare.grid_method("rl") == "sgd"
    with pytest.raises(ValueError, match="unknown method 'sgd'"):
        compare.plan_runs("td3", "Pendulum-v1", ["sgd"], [0])
    with pytest.raises(ValueError, match="unknown method 'critic-adam'"):
        compare.check_methods(["critic-adam"], "rl")


@pytest.mark.parametrize(
    "kwargs, match",
    [({"method": "alrao", "lr": 1e-3}, "lr is the critics' rate"), ({"method": "critic-adam"}, "lr is the critics"),
     ({"algo": "ppo"}, "algo must be one of"), ({"method": "critic-adam", "lr": -1.0}, "lr must be"),
     ({"total_steps": 0}, "total_steps"), ({"eta_min": 1.0, "eta_max": 0.5}, "eta_min")],
)
def test_bad_configurations_are_named(kwargs: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        ContinuousConfig(**kwargs)


def test_the_grid_sets_the_critics_rate_only() -> None:
    """SB3 writes learning_rate into every optimizer before each train(): the critics keep the grid's rate."""
    model = make_agent(ContinuousConfig(algo="sac", method="critic-adam", lr=1e-2, learning_starts=20))
    model.learn(60)
    assert [g["lr"] for g in model.critic.optimizer.param_groups] == [1e-2]
    assert model.actor.optimizer.param_groups[0]["lr"] == 3e-4
    assert isinstance(make_agent(ContinuousConfig(algo="td3", method="alrao")), AlraoTD3)
    alrao = make_agent(ContinuousConfig(algo="sac", method="alrao", eta_min=1e-4, eta_max=1.0, heads=3))
    assert isinstance(alrao, AlraoSAC) and alrao.critic.q_model.n_heads == 3
    assert alrao.critic.optimizer.defaults["eta_max"] == 1.0


def test_a_run_writes_a_dqn_runs_outputs_and_is_reproducible(tmp_path: pathlib.Path) -> None:
    config = ContinuousConfig(algo="td3", method="alrao", total_steps=300, eval_every=150, eval_episodes=1,
                              learning_starts=50, heads=4)
    first = train(config, str(tmp_path / "a"), test_seeds=[5])
    again = train(config, str(tmp_path / "b"), test_seeds=[5])
    assert first["test_return_mean"] == again["test_return_mean"]
    with open(tmp_path / "a" / "evals.csv") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["step"]) for r in rows] == [150, 300]
    assert float(rows[-1]["eval_return_mean"]) == first["final_eval_return_mean"]
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert len(summary["winner_heads"]) == 2 and len(summary["dead_heads"]) == 2
    assert (tmp_path / "a" / "model.zip").is_file()


def test_compare_cli_end_to_end(tmp_path: pathlib.Path) -> None:
    from alrao_cli.compare import main

    out = tmp_path / "sweep"
    argv = ["--algo", "sac", "--env", "Pendulum-v1", "--seeds", "1", "--total-steps", "200", "--eval-every", "100",
            "--eval-episodes", "1", "--test-episodes", "1", "--learning-starts", "50", "--sgd-grid", "1e-3,1e-2",
            "--heads", "3", "--workers", "1", "--out", str(out), "--no-progress", "--floor-episodes", "2"]
    assert main(argv) == 0
    with open(out / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["method"], r["lr"]) for r in rows) == [("adam", ""), ("alrao", ""), ("critic-adam", "0.001"),
                                                           ("critic-adam", "0.01")]
    assert all(math.isfinite(float(r["test_return"])) for r in rows)
    report = (out / "report.md").read_text()
    assert "critic Adam with the selected rate" in report and "## The critic Adam grid" in report
    assert "3e-4 (SB3's default" in report
    for name in ("curves.png", "rates.png", "posterior.png"):
        assert (out / name).stat().st_size > 0
    mtime = (out / "runs" / "alrao" / "seed0" / "evals.csv").stat().st_mtime_ns
    assert main(argv) == 0  # a second invocation reuses every finished run
    assert (out / "runs" / "alrao" / "seed0" / "evals.csv").stat().st_mtime_ns == mtime
