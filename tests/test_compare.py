"""scripts/compare.py and agents/compare/: the sweep, selection on selection data only, statistics,
failed runs, resume, the Ray backend, the supervised path and bad arguments."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from test_cifar_data import _fake_batches, _write_python  # noqa: E402
from test_supervised_train import PTB_LINES  # noqa: E402

from agents import compare  # noqa: E402
from agents.compare import Metric, RunResult, RunSpec  # noqa: E402
from alrao_cli.compare import main as compare_main  # noqa: E402

TINY_RL = ["--env", "CartPole-v1", "--seeds", "2", "--total-steps", "600", "--sgd-grid", "1e-3,1e-1",
           "--eval-every", "300", "--eval-episodes", "2", "--test-episodes", "2", "--learning-starts", "100",
           "--exploration-steps", "300", "--floor-episodes", "5", "--no-progress"]
RETURN = Metric("return", True, floor=-1000.0, floor_label="random policy")
LOSS = Metric("loss", False, floor=2.3, floor_label="uniform prediction", unit="nats")
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def tiny_sweep(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """A tiny CartPole sweep through the default process pool (2 workers): 2 seeds x (Alrao, Adam, 2 SGD rates)."""
    out = tmp_path_factory.mktemp("sweep") / "cartpole"
    capture = _Capture()
    with capture:
        assert compare_main([*TINY_RL, "--out", str(out), "--workers", "2"]) == 0
    return out, capture.stdout


class _Capture:
    """Capture sys.stdout in a module-scoped fixture (capsys is function-scoped)."""

    def __enter__(self) -> None:
        import io

        self._old, self._buffer = sys.stdout, io.StringIO()
        sys.stdout = self._buffer

    def __exit__(self, *exc: object) -> None:
        sys.stdout = self._old
        self.stdout = self._buffer.getvalue()


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _result(method: str, lr: float | None, seed: int, selection: float, test: float, **kw: Any) -> RunResult:
    return RunResult(method, lr, seed, selection, test, **kw)


# --- the sweep end to end ---------------------------------------------------------------------------


def test_tiny_sweep_writes_every_run_results_csv_report_and_three_figures(tiny_sweep: tuple[Path, str]) -> None:
    out, stdout = tiny_sweep
    assert "ran 8 runs, reused 0 finished runs" in stdout
    rows = _rows(out / "results.csv")
    assert len(rows) == 8
    assert list(rows[0]) == ["method", "lr", "seed", "selection_return", "test_return", "test_return_std",
                             "distinct_actions", "failed", "reason", "wall_seconds", "logdir"]
    assert sorted((r["method"], r["lr"], r["seed"]) for r in rows) == sorted(
        (m, lr, s) for s in ("0", "1") for m, lr in (("alrao", ""), ("adam", ""), ("sgd", "0.001"), ("sgd", "0.1")))
    for row in rows:
        run = out / row["logdir"]
        assert {"summary.json", "evals.csv", "compare.json", "checkpoint.pt"} <= set(os.listdir(run))
        assert math.isfinite(float(row["test_return"])) and row["failed"] in ("0", "1")
        assert 1 <= int(row["distinct_actions"]) <= 2
    assert (out / "runs" / "sgd-lr0.001" / "seed1").is_dir()
    report = (out / "report.md").read_text()
    assert "| Method | LR | Test return (mean ± std) | IQM [95% CI] | Failed runs |" in report
    for line in ("| SGD with optimal LR |", "| Adam (default) |", "| Alrao |", "**Ratio Alrao / best SGD**",
                 "## The SGD grid", "## Failed runs", "## Protocol"):
        assert line in report
    for name in ("curves.png", "rates.png", "posterior.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG) and len(data) > 10_000


def test_test_return_comes_from_fresh_episodes_of_the_final_policy(tiny_sweep: tuple[Path, str]) -> None:
    out, _ = tiny_sweep
    from agents.dqn import DQNAgent, evaluate
    from alrao_rl.checkpoint import load_checkpoint
    from envs import make_env

    record = json.loads((out / "runs" / "alrao" / "seed1" / "compare.json").read_text())
    spec = RunSpec(**{**record["spec"], "options": tuple(tuple(x) for x in record["spec"]["options"])})
    config = compare.dqn_config(spec)
    env = make_env(config.env, config.seed, n_bins=config.n_bins)
    agent = DQNAgent(4, 2, config)
    agent.load_state_dict(load_checkpoint(out / "runs" / "alrao" / "seed1" / "checkpoint.pt")["agent"])
    mean, _ = evaluate(agent, env, [2_000_000 + 1000 * 1 + k for k in range(2)])
    assert record["result"]["test"] == pytest.approx(mean)
    assert record["config_hash"] == spec.config_hash()


def test_second_invocation_reuses_every_finished_run(tiny_sweep: tuple[Path, str],
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    out, _ = tiny_sweep
    summaries = sorted((out / "runs").glob("*/seed*/summary.json"))
    before = [p.stat().st_mtime_ns for p in summaries]
    assert compare_main([*TINY_RL, "--out", str(out), "--workers", "2"]) == 0
    assert "ran 0 runs, reused 8 finished runs" in capsys.readouterr().out
    assert [p.stat().st_mtime_ns for p in summaries] == before
    assert len(_rows(out / "results.csv")) == 8


def test_a_changed_configuration_is_not_taken_for_a_finished_run(tiny_sweep: tuple[Path, str]) -> None:
    out, _ = tiny_sweep
    options = {"total_steps": 600, "eval_every": 300, "eval_episodes": 2, "learning_starts": 100,
               "exploration_steps": 300}
    same = compare.plan_runs("rl", "CartPole-v1", ["adam"], [0], options=options, test_episodes=2)[0]
    assert compare.load_finished(str(out), same) is not None
    changed = compare.plan_runs("rl", "CartPole-v1", ["adam"], [0], options={**options, "total_steps": 601},
                                test_episodes=2)[0]
    assert compare.run_dir(str(out), changed) == compare.run_dir(str(out), same)
    assert compare.load_finished(str(out), changed) is None


def test_run_sweep_calls_the_run_function_only_for_unfinished_runs(tmp_path: Path) -> None:
    specs = compare.plan_runs("rl", "CartPole-v1", ["adam", "sgd"], [0, 1], sgd_grid=[0.1])
    calls: list[str] = []

    def fake_run(spec: RunSpec, out: str) -> RunResult:
        calls.append(spec.label)
        result = _result(spec.method, spec.lr, spec.seed, 1.0, 2.0, logdir=os.path.relpath(compare.run_dir(out, spec),
                                                                                                 out))
        os.makedirs(compare.run_dir(out, spec), exist_ok=True)
        record = {"config_hash": spec.config_hash(), "result": result.to_json()}
        Path(compare.run_dir(out, spec), "compare.json").write_text(json.dumps(record))
        return result

    first = compare.run_sweep(specs, str(tmp_path), backend="process", workers=1, progress=False, run_fn=fake_run)
    assert (first.ran, first.reused, len(calls)) == (4, 0, 4)
    second = compare.run_sweep(specs, str(tmp_path), backend="process", workers=1, progress=False, run_fn=fake_run)
    assert (second.ran, second.reused, len(calls)) == (0, 4, 4)
    assert [r.test for r in second.results] == [2.0] * 4
    forced = compare.run_sweep(specs, str(tmp_path), backend="process", workers=1, progress=False, run_fn=fake_run,
                               force=True)
    assert (forced.ran, len(calls)) == (4, 8)


def test_an_unknown_backend_is_refused_naming_the_known_ones(tmp_path: Path) -> None:
    specs = compare.plan_runs("rl", "CartPole-v1", ["adam"], [0])
    with pytest.raises(ValueError, match=r"^backend must be 'population' or 'process' or 'ray', got 'slurm'$"):
        compare.run_sweep(specs, str(tmp_path), backend="slurm", progress=False)
    assert not os.listdir(tmp_path)  # refused before anything is written


# --- selection and statistics -----------------------------------------------------------------------


def test_selection_picks_the_best_selection_return_even_when_another_rate_tests_better() -> None:
    results = [
        _result("sgd", 1e-3, 0, selection=-200.0, test=-900.0),
        _result("sgd", 1e-3, 1, selection=-220.0, test=-950.0),
        _result("sgd", 1e-2, 0, selection=-400.0, test=-100.0),  # much better test return: must not matter
        _result("sgd", 1e-2, 1, selection=-380.0, test=-120.0),
        _result("alrao", None, 0, selection=-100.0, test=-100.0),  # other methods never enter SGD's selection
    ]
    best, means = compare.select_sgd_rate(results, RETURN)
    assert best == 1e-3
    assert means == {1e-3: -210.0, 1e-2: -390.0}
    rows, best_rate, _ = compare.summarize(results, RETURN, ["sgd", "alrao"])
    assert best_rate == 1e-3 and rows[0].lr == 1e-3 and rows[0].mean == -925.0


def test_selection_ignores_test_values_entirely() -> None:
    base = [_result("sgd", 0.1, 0, -300.0, -300.0), _result("sgd", 1.0, 0, -310.0, -300.0)]
    shuffled_tests = [_result("sgd", 0.1, 0, -300.0, math.nan), _result("sgd", 1.0, 0, -310.0, 500.0)]
    assert compare.select_sgd_rate(base, RETURN)[0] == compare.select_sgd_rate(shuffled_tests, RETURN)[0] == 0.1


def test_selection_scores_a_diverged_seed_as_the_floor_and_minimises_losses() -> None:
    results = [_result("sgd", 10.0, 0, -100.0, -100.0), _result("sgd", 10.0, 1, math.nan, math.nan),
               _result("sgd", 0.1, 0, -500.0, -500.0), _result("sgd", 0.1, 1, -500.0, -500.0)]
    best, means = compare.select_sgd_rate(results, RETURN)
    assert means[10.0] == pytest.approx((-100.0 - 1000.0) / 2) and best == 0.1
    losses = [_result("sgd", 0.1, 0, 1.5, 1.6), _result("sgd", 1.0, 0, 1.2, 1.9)]
    assert compare.select_sgd_rate(losses, LOSS)[0] == 1.0


def test_iqm_is_the_mean_of_the_middle_half() -> None:
    assert compare.iqm([1, 2, 3, 4, 100, 5, 6, 7]) == pytest.approx((3 + 4 + 5 + 6) / 4)
    assert compare.iqm([10, 1, 4, 7, 1000]) == pytest.approx((4 + 7 + 10) / 3)  # n=5: one dropped at each end
    assert compare.iqm([3.0, 5.0, 100.0]) == pytest.approx(36.0)  # fewer than 4 runs: the plain mean
    assert math.isnan(compare.iqm([]))


def test_bootstrap_ci_matches_a_hand_computation() -> None:
    values = [1.0, 2.0, 4.0, 8.0, 16.0]
    idx = np.random.default_rng(7).integers(0, 5, size=(50, 5))
    stats = []
    for row in idx:  # IQM of each resample, by hand
        sample = sorted(values[i] for i in row)
        stats.append(sum(sample[1:4]) / 3)
    expected = np.quantile(stats, [0.025, 0.975])
    low, high = compare.bootstrap_ci(values, resamples=50, seed=7)
    assert (low, high) == pytest.approx(tuple(expected))
    assert compare.bootstrap_ci(values, seed=3) == compare.bootstrap_ci(values, seed=3)
    assert compare.bootstrap_ci([5.0, 5.0, 5.0]) == (5.0, 5.0)
    low, high = compare.bootstrap_ci([0.0, 10.0])
    assert 0.0 <= low < high <= 10.0


def test_test_episodes_never_share_a_seed_with_selection_episodes() -> None:
    selection = {1_000_000 + 1000 * s + k for s in range(50) for k in range(compare.MAX_EPISODES)}
    test = {t for s in range(50) for t in compare.test_seeds(s, compare.MAX_EPISODES)}
    assert not selection & test
    assert compare.test_seeds(3, 2) == [2_003_000, 2_003_001]


# --- failed runs ------------------------------------------------------------------------------------


def test_failed_runs_are_counted_kept_and_scored_as_the_floor(tmp_path: Path) -> None:
    results = [
        _result("alrao", None, 0, -200.0, -210.0, logdir="runs/alrao/seed0"),
        _result("alrao", None, 1, -250.0, -1200.0, logdir="runs/alrao/seed1"),  # below the floor
        _result("sgd", 1.0, 0, -300.0, -320.0),
        _result("sgd", 1.0, 1, math.nan, math.nan),  # diverged
        _result("adam", None, 0, math.nan, math.nan, error="RuntimeError: boom"),
        _result("adam", None, 1, -150.0, -160.0),
    ]
    assert compare.failure_reason(results[0], RETURN) == ""
    assert "below the floor" in compare.failure_reason(results[1], RETURN)
    assert compare.failure_reason(results[3], RETURN).startswith("diverged")
    assert compare.failure_reason(results[4], RETURN).startswith("error")
    dead = _result("sgd", 10.0, 0, -900.0, -900.0, distinct_actions=1)  # above the floor, but a constant policy
    assert compare.failure_reason(dead, RETURN).startswith("degenerate")
    assert compare.failure_reason(_result("sgd", 10.0, 0, -900.0, -900.0, distinct_actions=3), RETURN) == ""
    nan_q = _result("sgd", 10.0, 0, -900.0, -900.0, outputs_finite=False, distinct_actions=3)
    assert compare.failure_reason(nan_q, RETURN) == "diverged: the final network's outputs are not finite"
    rows, best, _ = compare.summarize(results, RETURN, ["sgd", "adam", "alrao"])
    by = {r.method: r for r in rows}
    assert best == 1.0 and by["sgd"].failed == 1 and by["sgd"].runs == 2
    assert by["sgd"].mean == pytest.approx((-320.0 - 1000.0) / 2)  # the NaN run enters as the floor
    assert by["adam"].failed == 1 and by["alrao"].failed == 1 and by["alrao"].mean == pytest.approx(-705.0)
    info = compare.SweepInfo("rl", "Pendulum-v1", [0, 1], ["alrao", "sgd", "adam"], [1.0], 1e-5, 10.0, 10,
                             "10 steps", "selection episodes", "test episodes", "random policy")
    paths = compare.write_report(str(tmp_path), results, RETURN, info, resamples=100)
    rows_csv = _rows(Path(paths["results"]))
    assert len(rows_csv) == 6 and sum(r["failed"] == "1" for r in rows_csv) == 3
    nan_row = next(r for r in rows_csv if r["method"] == "sgd" and r["seed"] == "1")
    assert nan_row["test_return"] == "nan" and nan_row["reason"].startswith("diverged")
    report = Path(paths["report"]).read_text()
    assert "- sgd-lr1, seed 1: diverged" in report and "- adam, seed 0: error: RuntimeError: boom" in report
    assert "| 1/2 |" in report
    table = report.split("\n\n")[2].splitlines()
    assert [line.split(" | ")[0] for line in table[2:]] == ["| SGD with optimal LR", "| Adam (default)", "| Alrao"]
    for name in ("curves", "rates", "posterior"):  # figures are drawn even without run folders
        assert Path(paths[name]).read_bytes().startswith(PNG)


def test_a_crashing_run_is_a_failed_result_that_is_tried_again(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    def crash(spec: RunSpec, logdir: str) -> RunResult:
        raise RuntimeError("boom")

    monkeypatch.setattr("agents.compare.runs._run_rl", crash)
    spec = compare.plan_runs("rl", "CartPole-v1", ["adam"], [0])[0]
    result = compare.execute_run(spec, str(tmp_path))
    assert result.error == "RuntimeError: boom" and math.isnan(result.test)
    assert compare.failure_reason(result, RETURN).startswith("error")
    assert compare.load_finished(str(tmp_path), spec) is None


def test_random_policy_floor_is_reproducible() -> None:
    returns = compare.random_policy_returns("CartPole-v1", episodes=3)
    assert returns == compare.random_policy_returns("CartPole-v1", episodes=3)
    assert len(returns) == 3 and all(5 <= r <= 200 for r in returns)


# --- peers, Ray, supervised ---------------------------------------------------------------------------


def _hide_modules(monkeypatch: pytest.MonkeyPatch, *names: str) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a, **k: None if name in names else real(name, *a, **k))


def test_a_peer_whose_package_is_missing_is_refused_naming_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    _hide_modules(monkeypatch, "prodigyopt")
    with pytest.raises(ValueError, match=r"'prodigy' needs the package 'prodigyopt'.*alrao-rl\[peers\]"):
        compare.check_methods(["alrao", "prodigy"])


def test_a_peer_trains_with_its_own_optimizer(tmp_path: Path) -> None:
    pytest.importorskip("prodigyopt")
    from alrao_rl.checkpoint import load_checkpoint

    options = {"total_steps": 300, "eval_every": 300, "eval_episodes": 1, "learning_starts": 100}
    spec = compare.plan_runs("rl", "CartPole-v1", ["prodigy"], [0], options=options, test_episodes=1)[0]
    result = compare.execute_run(spec, str(tmp_path))
    assert not result.error and math.isfinite(result.test)
    saved = load_checkpoint(Path(compare.run_dir(str(tmp_path), spec)) / "checkpoint.pt")
    assert "d" in saved["agent"]["optimizer"]["param_groups"][0]  # Prodigy's distance estimate
    from agents import dqn

    assert dqn.DQNAgent.__name__ == "DQNAgent"  # the swap is undone


def test_ray_backend_runs_a_tiny_sweep_on_a_local_instance(tmp_path: Path) -> None:
    pytest.importorskip("ray")
    options = {"total_steps": 200, "eval_every": 200, "eval_episodes": 1, "learning_starts": 100}
    specs = compare.plan_runs("rl", "CartPole-v1", ["sgd", "adam"], [0], sgd_grid=[0.01], options=options,
                              test_episodes=1)
    outcome = compare.run_sweep(specs, str(tmp_path), backend="ray", workers=2, progress=False)
    assert outcome.ran == 2 and [r.method for r in outcome.results] == ["sgd", "adam"]
    assert all(not r.error and math.isfinite(r.test) for r in outcome.results)
    assert all(compare.load_finished(str(tmp_path), s) is not None for s in specs)


@pytest.fixture
def ptb_dir(tmp_path: Path) -> Path:
    root = tmp_path / "ptb"
    root.mkdir()
    for name, lines in (("train", PTB_LINES * 2), ("valid", PTB_LINES[:3]), ("test", PTB_LINES[3:])):
        (root / f"ptb.{name}.txt").write_text("\n".join(lines) + "\n")
    return root


def test_supervised_sweep_on_tiny_ptb_reports_losses_and_accuracy(ptb_dir: Path, tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    argv = ["--task", "ptb", "--data-dir", str(ptb_dir), "--seeds", "1", "--sgd-grid", "0.1,1", "--epochs", "1",
            "--batch-size", "2", "--bptt", "30", "--workers", "1", "--no-progress", "--out", str(out)]
    assert compare_main(argv) == 0  # the word-level files stand in for the character files
    assert "ran 4 runs" in capsys.readouterr().out
    rows = _rows(out / "results.csv")
    assert list(rows[0])[3:6] == ["selection_loss", "test_loss", "test_accuracy"]
    assert all(math.isfinite(float(r["selection_loss"])) and 0 <= float(r["test_accuracy"]) <= 1 for r in rows)
    report = (out / "report.md").read_text()
    assert "Top-1 % (mean ± std)" in report and "bits per character" in report
    assert "**Ratio Alrao / best SGD**" in report
    assert (out / "posterior.png").read_bytes().startswith(PNG)


def test_supervised_sweep_on_tiny_cifar_selects_on_validation_and_tests_on_the_test_set(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, out = tmp_path / "cifar", tmp_path / "out"
    _write_python(data, _fake_batches(records=20))  # 80 train / 20 valid / 20 test images
    argv = ["--task", "cifar", "--data-dir", str(data), "--seeds", "1", "--sgd-grid", "0.01", "--epochs", "1",
            "--width", "0.0625", "--limit-train", "16", "--batch-size", "8", "--workers", "1", "--no-progress",
            "--out", str(out)]
    assert compare_main(argv) == 0
    capsys.readouterr()
    rows = {r["method"]: r for r in _rows(out / "results.csv")}
    assert set(rows) == {"alrao", "sgd", "adam"}
    for method, row in rows.items():
        summary = json.loads((out / row["logdir"] / "summary.json").read_text())
        assert float(row["test_loss"]) == pytest.approx(summary["test_loss"], rel=1e-5), method
    report = (out / "report.md").read_text()
    assert "Test loss, nats (mean ± std)" in report and "uniform prediction" in report


# --- bad arguments ----------------------------------------------------------------------------------


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "taken"
    path.write_text("x")
    return path


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--seeds", "0"], "--seeds must be >= 1"),
        (["--sgd-grid", "-1"], "--sgd-grid: rates must be finite numbers > 0"),
        (["--sgd-grid", "1e-3,fast"], "'fast' is not a number"),
        (["--sgd-grid", ","], "--sgd-grid is empty"),
        (["--methods", "alrao,rmsprop"], "unknown method 'rmsprop'"),
        (["--methods", "alrao,alrao"], "given twice"),
        (["--methods", "alrao,prodigy"], "alrao-rl[peers]"),
        (["--backend", "ray"], "alrao-rl[ray]"),
        (["--ray-address", "127.0.0.1:6379"], "--ray-address needs --backend ray"),
        (["--env", "NoSuchEnv-v0"], "NoSuchEnv-v0"),
        (["--total-steps", "0"], "--total-steps must be >= 1"),
        (["--test-episodes", "1001"], "--test-episodes must be <= 1000"),
        (["--workers", "0"], "--workers must be >= 1"),
        (["--heads", "0"], "heads must be >= 1"),
        (["--task", "cifar"], "--task cifar needs --data-dir"),
        (["--task", "ptb", "--data-dir", "/no/such/folder"], "is not a folder"),
        (["--task", "imagenet"], "invalid choice"),
        (["--out", "FILE"], "is a file, not a folder"),
    ],
)
def test_bad_arguments_exit_2_with_one_line(argv: list[str], message: str, a_file: Path,
                                            monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    _hide_modules(monkeypatch, "prodigyopt", "ray")
    monkeypatch.setattr(sys, "argv", ["compare.py"])  # the program name of the error line
    argv = [str(a_file) if a == "FILE" else a for a in argv]
    if "--out" not in argv:
        argv += ["--out", str(a_file.parent / "out")]
    with pytest.raises(SystemExit) as info:
        compare_main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("compare.py: error: ") and message in err


def test_bad_arguments_in_a_subprocess_exit_2_without_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), "--seeds", "0", "--out",
                           str(tmp_path)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr


def test_help_documents_every_option() -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "compare.py"), "--help"], capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0
    for option in ("--env", "--seeds", "--total-steps", "--out", "--sgd-grid", "--methods", "--task", "--backend",
                   "--ray-address", "--force", "--workers", "--test-episodes", "--data-dir"):
        assert option in proc.stdout


def test_the_population_backend_gives_the_results_of_runs_alone(tmp_path: Path) -> None:
    """Every member of a population is its run alone, bit for bit: the same test returns, the same
    evaluations, whatever the split into populations."""
    options = {"total_steps": 1300, "eval_every": 650, "eval_episodes": 2, "learning_starts": 1000}
    specs = compare.plan_runs("rl", "CartPole-v1", ["alrao", "sgd", "adam"], [0, 1], sgd_grid=[1e-2, 1.0],
                              options=options, test_episodes=2)
    alone = compare.run_sweep(specs, str(tmp_path / "process"), backend="process", workers=1, progress=False)
    start = time.perf_counter()
    together = compare.run_sweep(specs, str(tmp_path / "population"), backend="population", workers=2,
                                 progress=False)
    elapsed = time.perf_counter() - start
    for a, b in zip(alone.results, together.results, strict=True):
        assert (a.method, a.lr, a.seed) == (b.method, b.lr, b.seed) and not a.error and not b.error
        assert (a.selection, a.test, a.test_std, a.distinct_actions, a.outputs_finite) == (
            b.selection, b.test, b.test_std, b.distinct_actions, b.outputs_finite)
        evals = [Path(root, r.logdir, "evals.csv").read_text() for root, r in ((tmp_path / "process", a),
                                                                                (tmp_path / "population", b))]
        assert evals[0] == evals[1]
    units = compare.work_units(specs, 2)  # two populations of four, each with every method
    assert sorted(len(u) for u in units) == [4, 4] and sorted(i for u in units for i in u) == list(range(8))
    assert all({specs[i].method for i in u} == {"alrao", "sgd", "adam"} for u in units)
    # a member's time is its share of its population's: summing the members counts the compute once
    for unit in units:
        walls = {together.results[i].wall_seconds for i in unit}
        assert len(walls) == 1 and 0 < walls.pop() * len(unit) < elapsed
