"""Suites (agents/compare/suite.py, aggregate.py, compare.py --suite): the suite's envs, the normalized scores
and rliable's aggregates against literal computations, the per-env IQM and bootstrap against rliable's
definitions, Alrao's heads read from checkpoints, a tiny suite end to end, and refused options."""

from __future__ import annotations

import itertools
import math
import os
from pathlib import Path

import numpy as np
import pytest
import scipy.stats
import torch

from agents.compare import aggregate as agg_module
from agents.compare import stats, suite
from agents.compare.aggregate import EnvResult, aggregate, alrao_heads_at_end
from agents.compare.stats import MethodSummary
from agents.compare.suite import SUITES, SuiteEnv, env_arguments, select_envs


def _row(method: str, values: list[float], failed: int = 0) -> MethodSummary:
    return MethodSummary(method=method, label=method, lr=None, runs=len(values), mean=float(np.mean(values)),
                         std=float(np.std(values)), iqm=stats.iqm(values), ci=(math.nan, math.nan), failed=failed,
                         accuracy=None, values=values)


def _env(name: str, floor: float, rows: dict[str, list[float]]) -> EnvResult:
    entry = SuiteEnv(name, 1000, tuple(rows), name.lower())
    return EnvResult(entry, floor, [_row(m, v) for m, v in rows.items()], best_rate=0.1)


# --- the suite -----------------------------------------------------------------------------------------


def test_the_paper_suite_is_the_issue_s_envs_steps_and_methods() -> None:
    entries = {e.env: e for e in SUITES["paper"]}
    assert {k: e.total_steps for k, e in entries.items()} == {
        "Pendulum-v1": 30_000, "CartPole-v1": 50_000, "LunarLander-v3": 250_000, "MountainCar-v0": 120_000}
    for e in entries.values():
        assert {"alrao", "sgd", "adam", "adaqn"} <= set(e.methods)
    for env in ("Pendulum-v1", "CartPole-v1"):
        assert {"prodigy", "dadapt-adam", "dog", "sf-adamw"} <= set(entries[env].methods)
    assert suite.SUITE_SEEDS == 10


def test_select_envs_and_env_arguments() -> None:
    assert [e.env for e in select_envs("paper", ["MountainCar-v0", "Pendulum-v1"])] == ["Pendulum-v1",
                                                                                          "MountainCar-v0"]
    with pytest.raises(ValueError, match=r"suite 'paper' has no env 'Acrobot-v1' \(it has Pendulum-v1, "):
        select_envs("paper", ["Acrobot-v1"])
    with pytest.raises(ValueError, match=r"suite must be one of \['paper'\], got 'atari'"):
        select_envs("atari")
    entry = SuiteEnv("CartPole-v1", 50_000, ("alrao", "sgd"), "cartpole")
    assert env_arguments(entry, 10, "docs/results") == [
        "--env", "CartPole-v1", "--total-steps", "50000", "--seeds", "10", "--methods", "alrao,sgd",
        "--out", os.path.join("docs/results", "cartpole")]


# --- normalized scores and aggregates --------------------------------------------------------------------


def test_normalized_scores_are_gains_over_random_as_a_fraction_of_the_best_sgd_rate_s() -> None:
    env = _env("Pendulum-v1", -1200.0, {"sgd": [-200.0, -150.0, -100.0], "alrao": [-1200.0, -150.0, -300.0]})
    # R_bestSGD = -150: (R + 1200) / 1050
    np.testing.assert_allclose(env.normalized("alrao"), [0.0, 1.0, 900 / 1050])
    np.testing.assert_allclose(env.normalized("sgd").mean(), 1.0)
    assert env.normalized("adam") is None
    hopeless = _env("MountainCar-v0", -200.0, {"sgd": [-200.0, -200.0], "alrao": [-200.0, -150.0]})
    assert hopeless.reference is None and hopeless.normalized("alrao") is None  # no better than random: no reference


def _mann_whitney(x: np.ndarray, y: np.ndarray) -> float:
    """P(X > Y) + P(X = Y) / 2 over every pair, by hand."""
    pairs = list(itertools.product(x, y))
    return sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs)


def test_aggregates_match_literal_computations_and_skip_envs_without_a_reference() -> None:
    rng = np.random.default_rng(0)
    envs = []
    for name, floor in (("A-v0", 0.0), ("B-v0", -100.0)):
        rows = {m: list(rng.normal(loc, 20.0, size=6) + floor) for m, loc in
                (("alrao", 90.0), ("sgd", 100.0), ("adam", 70.0), ("adaqn", 40.0))}
        envs.append(_env(name, floor, rows))
    envs.append(_env("C-v0", 0.0, {"alrao": [1.0] * 6, "sgd": [-1.0] * 6, "adam": [0.0] * 6, "adaqn": [0.0] * 6}))
    result = aggregate(envs, resamples=300, seed=1)
    assert result is not None and result.envs == ["A-v0", "B-v0"] and result.methods == ["alrao", "sgd", "adam",
                                                                                           "adaqn"]
    for m in result.methods:
        scores = np.stack([e.normalized(m) for e in envs[:2]], axis=1)
        np.testing.assert_array_equal(result.scores[m], scores)
        iqm, mean = result.point[m]
        assert iqm == pytest.approx(scipy.stats.trim_mean(scores.ravel(), 0.25))
        assert mean == pytest.approx(scores.mean())
        low, high = result.interval[m]
        assert low[0] <= iqm <= high[0] and low[1] <= mean <= high[1]
        np.testing.assert_allclose(result.profiles[m], [np.mean(scores > t) for t in result.taus])
    for m in ("sgd", "adam", "adaqn"):
        expected = np.mean([_mann_whitney(result.scores["alrao"][:, t], result.scores[m][:, t]) for t in range(2)])
        assert result.improvement[m] == pytest.approx(expected)
        lo, hi = result.improvement_intervals[m]
        assert lo <= result.improvement[m] <= hi
    again = aggregate(envs, resamples=300, seed=1)
    assert again is not None and np.array_equal(again.interval["alrao"], result.interval["alrao"])  # seeded


def test_no_aggregate_without_a_reference() -> None:
    env = _env("MountainCar-v0", -200.0, {"sgd": [-200.0] * 3, "alrao": [-200.0] * 3})
    assert aggregate([env], resamples=50) is None


def test_iqm_and_bootstrap_ci_are_rliable_s_definitions() -> None:
    from rliable import library as rly
    from rliable import metrics

    rng = np.random.default_rng(3)
    for n in (1, 3, 4, 5, 8, 10, 13):
        x = rng.normal(size=n)
        assert stats.iqm(x) == pytest.approx(metrics.aggregate_iqm(x[:, None]), abs=1e-12), n
    x = rng.normal(size=10)
    ours = stats.bootstrap_ci(x, resamples=20_000, seed=0)
    with agg_module._global_numpy_seed(0):  # (rliable draws its resamples from numpy's global generator)
        _, interval = rly.get_interval_estimates({"x": x[:, None]}, lambda s: np.array([metrics.aggregate_iqm(s)]),
                                                 reps=20_000)
    theirs = interval["x"].ravel()
    width = theirs[1] - theirs[0]
    assert ours == pytest.approx(tuple(theirs), abs=0.05 * width)  # two percentile bootstraps: Monte Carlo error


# --- Alrao's heads at the end --------------------------------------------------------------------------


def test_alrao_heads_at_end_reads_dead_heads_and_the_winner_s_rate_from_the_checkpoint(tmp_path: Path) -> None:
    from agents.dqn import DQNAgent, DQNConfig, _config_state
    from alrao_rl.checkpoint import save_checkpoint

    config = DQNConfig(env="CartPole-v1", hidden=(8, 8), heads=5, eta_min=1e-4, eta_max=1.0, lr=2.0)
    agent = DQNAgent(4, 2, config)
    with torch.no_grad():
        agent.q_net.heads.dead[[0, 3]] = True
        agent.q_net.switch.log_filtered.copy_(torch.tensor([0.1, 0.2, 0.4, 0.0, 0.3]).log())
        agent.q_net.switch.log_predictive.copy_(torch.tensor([0.6, 0.1, 0.1, 0.1, 0.1]).log())
    save_checkpoint(tmp_path / "checkpoint.pt", {"config": _config_state(config), "agent": agent.state_dict()})
    heads = alrao_heads_at_end(str(tmp_path), seed=4)
    assert heads is not None and (heads.seed, heads.dead, heads.winner) == (4, 2, 2)
    assert heads.winner_rate == pytest.approx(2.0 * 1e-2)  # eta_2 of 1e-4, 1e-3, 1e-2, 1e-1, 1, times lr
    assert alrao_heads_at_end(str(tmp_path / "missing"), seed=0) is None


# --- the CLI ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--suite", "paper", "--env", "CartPole-v1"], "--env cannot be used with --suite"),
        (["--suite", "paper", "--total-steps", "100"], "--total-steps cannot be used with --suite"),
        (["--suite", "paper", "--methods", "alrao"], "--methods cannot be used with --suite"),
        (["--suite", "paper", "--envs", "Acrobot-v1"], "--envs: suite 'paper' has no env 'Acrobot-v1'"),
        (["--suite", "paper", "--seeds", "0"], "--seeds must be"),
        (["--envs", "CartPole-v1"], "--envs needs --suite"),
    ],
)
def test_suite_options_are_refused_in_one_line(argv: list[str], message: str,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    from alrao_cli.compare import main

    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_a_tiny_suite_runs_each_env_resumes_and_summarizes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    from alrao_cli.compare import main

    monkeypatch.setitem(SUITES, "tiny", (SuiteEnv("CartPole-v1", 1200, ("alrao", "sgd", "adam"), "cartpole"),
                                         SuiteEnv("Acrobot-v1", 500, ("alrao", "sgd", "adam"), "acrobot")))
    out = tmp_path / "suite"
    base = ["--suite", "tiny", "--seeds", "2", "--out", str(out), "--no-progress", "--bootstrap-resamples", "100"]
    assert main([*base, "--envs", "CartPole-v1"]) == 0
    summary = (out / "summary.md").read_text()
    assert "Not finished yet: Acrobot-v1 (0 of 18 runs finished)" in summary
    assert "[CartPole-v1](cartpole/report.md) (1,200 steps)" in summary
    rows = [line for line in summary.splitlines() if line.startswith("| CartPole-v1 |")]
    labels = [r.split(" | ")[1] for r in rows]
    assert labels[0].startswith("SGD, best rate (") and labels[1:] == ["Adam (default)", "**Alrao**"]
    alrao = next(r for r in rows if "**Alrao**" in r)
    heads = [alrao_heads_at_end(str(out / "cartpole" / "runs" / "alrao" / f"seed{s}"), s) for s in range(2)]
    assert all(h is not None for h in heads)
    dead = [h.dead for h in heads if h is not None]
    assert f"| {np.mean(dead):.1f} ({min(dead)}-{max(dead)}) |" in alrao
    assert (out / "cartpole" / "report.md").exists() and not (out / "acrobot").exists()
    capsys.readouterr()
    assert main(base) == 0  # the whole suite: CartPole's runs are reused, Acrobot's trained
    printed = capsys.readouterr().out
    assert "ran 0 runs, reused 18 finished runs" in printed and "ran 18 runs, reused 0 finished runs" in printed
    summary = (out / "summary.md").read_text()
    assert "Not finished" not in summary and "| Acrobot-v1 | **Alrao** |" in summary
    assert "Command: `" in summary and "--suite tiny --out" in summary
    assert "CartPole-v1 0.0 h, Acrobot-v1 0.0 h; 0.0 core-hours in all" in summary


def test_write_summary_states_the_goal_per_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The goal lines, from envs read as given (no runs on disk): met, missed on score, missed on failures."""
    envs = {
        "A-v0": _env("A-v0", 0.0, {"sgd": [100.0, 100.0], "alrao": [95.0, 93.0], "adam": [50.0, 60.0]}),
        "B-v0": _env("B-v0", 0.0, {"sgd": [100.0, 100.0], "alrao": [50.0, 60.0], "adam": [50.0, 60.0]}),
        "C-v0": _env("C-v0", 0.0, {"sgd": [100.0, 100.0], "alrao": [100.0, 100.0], "adam": [50.0, 60.0]}),
    }
    envs["C-v0"].rows[1] = _row("alrao", [100.0, 100.0], failed=1)
    monkeypatch.setattr(agg_module, "read_env", lambda out, entry, seeds, floor_episodes: (envs[entry.env], 6, 6))
    entries = [e.entry for e in envs.values()]
    paths = agg_module.write_summary(str(tmp_path), "tiny", entries, 2, "cmd", resamples=50)
    text = Path(paths["summary"]).read_text()
    assert "- A-v0: normalized score 0.94 (>= 0.9), 0/2 failed Alrao runs: **met**." in text
    assert "- B-v0: normalized score 0.55 (< 0.9), 0/2 failed Alrao runs: **not met**." in text
    assert "- C-v0: normalized score 1.00 (>= 0.9), 1/2 failed Alrao runs: **not met**." in text
    assert Path(paths["aggregate"]).exists()
