"""scripts/evaluate.py (alrao-evaluate) and agents.saved_policy: greedy episodes of a trained agent.

Tiny runs (a few hundred steps) of scripts/run_dqn.py and of SB3's AlraoDQN are evaluated; the evaluation
repeats what training measured, acts as SB3's own load would, writes nothing, and refuses every file it
cannot read safely in one line, without running code from it.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import pickle
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from agents.dqn import DQNConfig, evaluate, train
from agents.saved_policy import load_policy
from alrao_cli.evaluate import main as evaluate_main
from alrao_rl.checkpoint import save_checkpoint
from envs import make_env

ROOT = Path(__file__).resolve().parents[1]
TINY: dict[str, Any] = {"env": "CartPole-v1", "total_steps": 400, "learning_starts": 100, "eval_every": 400,
                        "eval_episodes": 3, "buffer_size": 1000, "heads": 4}
SB3_FAST: dict[str, Any] = {"learning_starts": 100, "batch_size": 32, "train_freq": 1, "buffer_size": 1000,
                            "device": "cpu", "seed": 0}


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def dqn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.set_num_threads(1)
    logdir = tmp_path_factory.mktemp("evaluate") / "run"
    logdir.mkdir()
    train(DQNConfig(**TINY), str(logdir), progress=False)
    return logdir


@pytest.fixture(scope="module")
def sb3_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from agents.sb3 import AlraoDQN, AlraoDQNPolicy

    torch.set_num_threads(1)
    model = AlraoDQN(AlraoDQNPolicy, "CartPole-v1", policy_kwargs={"net_arch": [16, 16], "n_heads": 3}, **SB3_FAST)
    model.learn(300)
    path = tmp_path_factory.mktemp("sb3") / "alrao_dqn.zip"
    model.save(path)
    return path


def _snapshot(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def _ok(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    capsys.readouterr()
    assert evaluate_main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    return out


def _parse(out: str) -> tuple[float, float, int]:
    match = re.match(r"^(\S+): (-?[\d.]+) \+/- ([\d.]+) over (\d+) greedy episodes", out)
    assert match, out
    return float(match.group(2)), float(match.group(3)), int(match.group(4))


# --- a run_dqn.py run ------------------------------------------------------------------------------------------


def test_evaluating_a_finished_run_on_its_evaluation_seeds_repeats_its_final_evaluation(
    dqn_run: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    summary = json.loads((dqn_run / "summary.json").read_text())
    policy = load_policy(str(dqn_run))
    env = make_env(policy.env_id, n_bins=policy.n_bins)
    mean, std = evaluate(policy, env, [1_000_000 + k for k in range(3)])  # type: ignore[arg-type]
    assert (mean, std) == (summary["final_eval_return_mean"], summary["final_eval_return_std"])
    monkeypatch.chdir(tmp_path)
    before = _snapshot(dqn_run)
    out = _ok(["--logdir", str(dqn_run), "--seed", "1000000", "--episodes", "3"], capsys)
    assert out.startswith(f"CartPole-v1: {mean:.2f} +/- {std:.2f} over 3 greedy episodes"), out
    assert _snapshot(dqn_run) == before and list(tmp_path.iterdir()) == []  # nothing written


def test_a_stopped_run_is_evaluated_from_its_checkpoint_alone(
    dqn_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logdir = tmp_path / "stopped"
    logdir.mkdir()
    shutil.copy(dqn_run / "checkpoint.pt", logdir / "checkpoint.pt")
    mean, _, episodes = _parse(_ok(["--logdir", str(logdir), "--episodes", "4", "--seed", "7"], capsys))
    assert episodes == 4 and mean > 0


def test_the_seed_picks_the_episodes(dqn_run: Path) -> None:
    policy = load_policy(str(dqn_run))
    env = make_env("CartPole-v1")
    assert evaluate(policy, env, [5, 6]) == evaluate(policy, env, [5, 6])  # type: ignore[arg-type]
    first = [env.reset(seed=s)[0] for s in (0, 1)]
    assert not np.array_equal(first[0], first[1])


# --- an SB3 AlraoDQN zip ------------------------------------------------------------------------------------------


def test_an_alrao_dqn_zip_acts_as_sb3s_own_load_without_unpickling(sb3_zip: Path) -> None:
    from agents.sb3 import AlraoDQN

    trusted = AlraoDQN.load(sb3_zip, device="cpu")  # SB3's loader (cloudpickle): fine for a file this test wrote
    policy = load_policy(str(sb3_zip), env_id="CartPole-v1")
    env = make_env("CartPole-v1")
    observations = [env.reset(seed=s)[0] for s in range(20)]
    observations += [np.random.default_rng(0).normal(size=4).astype(np.float32) for _ in range(20)]
    for obs in observations:
        expected, _ = trusted.predict(obs, deterministic=True)
        assert policy.greedy_action(obs) == int(expected)
    with torch.no_grad():  # and the Q-values behind them: the switch average of the heads
        q = trusted.q_net(torch.as_tensor(np.stack(observations)))
    assert [policy.greedy_action(o) for o in observations] == q.argmax(dim=1).tolist()


@pytest.mark.parametrize("where", ["zip", "folder"])
def test_evaluate_takes_a_zip_or_a_folder_holding_one(
    sb3_zip: Path, tmp_path: Path, where: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = sb3_zip if where == "zip" else sb3_zip.parent
    before = _snapshot(sb3_zip.parent)
    out = _ok(["--logdir", str(path), "--env", "CartPole-v1", "--episodes", "2"], capsys)
    assert _parse(out)[2] == 2 and "AlraoDQN on CartPole-v1, 3 heads" in out
    assert _snapshot(sb3_zip.parent) == before


# --- what must be refused ------------------------------------------------------------------------------------------


class _Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _rezip(source: Path, target: Path, replace: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w") as new:
        for name in old.namelist():
            new.writestr(name, replace.get(name, old.read(name)))
    return target


def _stock_dqn_zip(tmp: Path) -> Path:
    from stable_baselines3 import DQN

    model = DQN("MlpPolicy", "CartPole-v1", policy_kwargs={"net_arch": [8]}, buffer_size=100, device="cpu")
    model.save(tmp / "dqn.zip")
    return tmp / "dqn.zip"


def _pickled_kwargs_zip(tmp: Path) -> Path:
    from agents.sb3 import AlraoDQN, AlraoDQNPolicy

    kwargs = {"net_arch": [8], "n_heads": 2, "activation_fn": nn.Tanh}  # a class: SB3 pickles the whole dict
    AlraoDQN(AlraoDQNPolicy, "CartPole-v1", policy_kwargs=kwargs, buffer_size=100, device="cpu").save(tmp / "m.zip")
    return tmp / "m.zip"


def _bad(kind: str, ctx: dict[str, Path]) -> list[str]:
    """The command line of each refused case (files made in ctx['tmp'])."""
    tmp, run, sb3, marker = ctx["tmp"], ctx["run"], ctx["sb3"], ctx["marker"]
    folder = tmp / "case"
    folder.mkdir()
    good = (run / "checkpoint.pt").read_bytes()
    if kind == "missing":
        return ["--logdir", str(tmp / "nowhere")]
    if kind == "empty-folder":
        return ["--logdir", str(folder)]
    if kind == "two-zips":
        shutil.copy(sb3, folder / "a.zip")
        shutil.copy(sb3, folder / "b.zip")
        return ["--logdir", str(folder), "--env", "CartPole-v1"]
    if kind == "truncated-checkpoint":
        (folder / "checkpoint.pt").write_bytes(good[: len(good) // 2])
    elif kind == "foreign-checkpoint":
        save_checkpoint(folder / "checkpoint.pt", {"config": {"task": "cifar"}, "net": {}})
    elif kind == "pickle-checkpoint":
        (folder / "checkpoint.pt").write_bytes(pickle.dumps({"x": _Evil(marker)}))
    elif kind == "text-checkpoint":
        (folder / "checkpoint.pt").write_text("checkpoint\n")
    elif kind == "zip-without-env":
        return ["--logdir", str(sb3)]
    elif kind == "zip-of-another-env":
        return ["--logdir", str(sb3), "--env", "Acrobot-v1"]
    elif kind == "env-for-a-run":
        return ["--logdir", str(run), "--env", "CartPole-v1"]
    elif kind == "stock-dqn-zip":
        return ["--logdir", str(_stock_dqn_zip(folder)), "--env", "CartPole-v1"]
    elif kind == "pickled-policy-kwargs":
        return ["--logdir", str(_pickled_kwargs_zip(folder)), "--env", "CartPole-v1"]
    elif kind == "malicious-policy-weights":
        blob = io.BytesIO()
        torch.save({"x": _Evil(marker)}, blob)
        return ["--logdir", str(_rezip(sb3, folder / "m.zip", {"policy.pth": blob.getvalue()})), "--env", "CartPole-v1"]
    elif kind == "corrupt-zip":
        (folder / "m.zip").write_bytes(sb3.read_bytes()[:300])
        return ["--logdir", str(folder / "m.zip"), "--env", "CartPole-v1"]
    elif kind == "zero-episodes":
        return ["--logdir", str(run), "--episodes", "0"]
    return ["--logdir", str(folder)]


BAD = [
    ("missing", "--logdir '{tmp}/nowhere' does not exist"),
    ("empty-folder", "holds neither checkpoint.pt (a run_dqn.py run) nor an AlraoDQN .zip"),
    ("two-zips", "holds several zips (a.zip, b.zip)"),
    ("truncated-checkpoint", "not a valid checkpoint"),
    ("foreign-checkpoint", "is not a run_dqn.py checkpoint"),
    ("pickle-checkpoint", "not a valid checkpoint"),
    ("text-checkpoint", "not a valid checkpoint"),
    ("zip-without-env", "does not record its environment: give --env"),
    ("zip-of-another-env", "does not fit Acrobot-v1"),
    ("env-for-a-run", "names its own environment: drop --env and --n-bins"),
    ("stock-dqn-zip", "is not an AlraoDQN model"),
    ("pickled-policy-kwargs", "policy_kwargs were pickled by SB3"),
    ("malicious-policy-weights", "policy.pth is not a weights-only torch file"),
    ("corrupt-zip", "is not a readable Stable-Baselines3 zip"),
    ("zero-episodes", "--episodes must be in 1..100000, got 0"),
]


@pytest.mark.parametrize(("kind", "message"), BAD, ids=[k for k, _ in BAD])
def test_what_cannot_be_evaluated_is_refused_in_one_line_without_running_its_code(
    kind: str, message: str, dqn_run: Path, sb3_zip: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "pwned"
    argv = _bad(kind, {"tmp": tmp_path, "run": dqn_run, "sb3": sb3_zip, "marker": marker})
    before = _snapshot(tmp_path, dqn_run, sb3_zip.parent)
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        evaluate_main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert message.format(tmp=tmp_path) in err, err
    assert not marker.exists(), "a hostile file ran code"
    assert _snapshot(tmp_path, dqn_run, sb3_zip.parent) == before


def test_the_malicious_payloads_are_live_when_unpickled_unsafely(tmp_path: Path) -> None:
    """Positive control for the rows above."""
    pickle.loads(pickle.dumps(_Evil(tmp_path / "pwned")))
    assert (tmp_path / "pwned").exists()


def test_a_bad_logdir_in_a_real_process_is_one_line_and_exit_2(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "evaluate.py"), "--logdir", str(tmp_path / "x")],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("evaluate.py: error: --logdir") and len(proc.stderr.strip().splitlines()) == 1


# --- videos ---------------------------------------------------------------------------------------------------


def test_record_video_without_moviepy_says_what_to_install(
    dqn_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "moviepy" else real(name, *a))
    with pytest.raises(SystemExit) as exc:
        evaluate_main(["--logdir", str(dqn_run), "--record-video", str(tmp_path / "videos")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and len(err.strip().splitlines()) == 1, err
    assert "needs the package 'moviepy'" in err and "pip install 'alrao-rl[video]'" in err
    assert not (tmp_path / "videos").exists()


def test_record_video_refuses_a_folder_that_holds_files(
    dqn_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "moviepy" else real(name, *a))
    (tmp_path / "videos").mkdir()
    (tmp_path / "videos" / "CartPole-v1-episode-0.mp4").write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        evaluate_main(["--logdir", str(dqn_run), "--record-video", str(tmp_path / "videos")])
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "is not empty" in err and len(err.strip().splitlines()) == 1
    assert (tmp_path / "videos" / "CartPole-v1-episode-0.mp4").read_text() == "keep me"


@pytest.mark.skipif(importlib.util.find_spec("moviepy") is None, reason="needs the optional package moviepy")
def test_record_video_writes_one_video_per_episode(
    dqn_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    videos = tmp_path / "videos"
    assert _parse(_ok(["--logdir", str(dqn_run), "--episodes", "2", "--record-video", str(videos)], capsys))[2] == 2
    files = sorted(p.name for p in videos.iterdir())
    assert files == ["CartPole-v1-episode-0.mp4", "CartPole-v1-episode-1.mp4"], files
    assert all((videos / f).stat().st_size > 1000 for f in files)
