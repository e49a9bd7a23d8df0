"""Faults a long DQN run must survive: SIGKILL, SIGTERM, foreign / corrupted / malicious checkpoints, a full disk.

The subprocess tests run ``scripts/run_dqn.py`` on CartPole-v1 for a few thousand steps; the others call
``main(argv)`` or :func:`agents.dqn.train` in this process. What each test proves is in its name.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

from agents.dqn import DQNConfig, train
from alrao_cli.run_dqn import main as dqn_main
from alrao_rl import checkpoint as ckpt_mod
from alrao_rl.checkpoint import FORMAT, META_KEY, load_checkpoint, save_checkpoint

ROOT = Path(__file__).resolve().parents[1]

TOTAL = 3000
COMMON = [
    "--env", "CartPole-v1", "--total-steps", str(TOTAL), "--checkpoint-every", "300", "--eval-every", "1000",
    "--eval-episodes", "2", "--buffer-size", "5000",
]  # fmt: skip
SHORT = ["--env", "CartPole-v1", "--total-steps", "400", "--learning-starts", "100", "--checkpoint-every", "200",
         "--eval-every", "400", "--eval-episodes", "1", "--buffer-size", "300", "--no-progress"]  # fmt: skip


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def _script(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "run_dqn.py"), "--no-progress", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_for(path: Path, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, (
            f"the run ended before writing {path.name}: {proc.stderr.read() if proc.stderr else ''}"
        )
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.02)


def _temp_files(logdir: Path) -> list[str]:
    return sorted(n for n in os.listdir(logdir) if n.endswith(".tmp"))


# --- SIGKILL, SIGTERM -------------------------------------------------------------------------------------


KILL_TOTAL = 5000  # long enough that the kill lands before the end even on a fast machine


@pytest.mark.parametrize("seed", [0, pytest.param(1, marks=pytest.mark.slow), pytest.param(2, marks=pytest.mark.slow)])
def test_sigkill_at_a_random_moment_loses_nothing_but_time(tmp_path: Path, seed: int) -> None:
    """Kill -9 at a seeded random moment after the first checkpoint; every poll of the checkpoint while the
    run writes it loads; ``--resume`` then finishes the run with the very results of a run never killed."""
    delay = random.Random(seed).uniform(0.0, 1.5)
    argv = [*COMMON, "--total-steps", str(KILL_TOTAL)]
    full = _script(*argv, "--logdir", str(tmp_path / "full"))
    killed = _script(*argv, "--logdir", str(tmp_path / "run"))
    ckpt = tmp_path / "run" / "checkpoint.pt"
    _wait_for(ckpt, killed)
    kill_at = time.monotonic() + delay
    steps_seen: set[int] = set()
    polls = 0
    while time.monotonic() < kill_at and killed.poll() is None:
        steps_seen.add(load_checkpoint(ckpt)["progress"]["step"])  # never half-written, whenever we look
        polls += 1
    killed.send_signal(signal.SIGKILL)
    assert killed.wait(30) == -signal.SIGKILL, "the run ended before the kill: make it longer"
    saved = load_checkpoint(ckpt)
    assert polls > 0 and 0 < saved["progress"]["step"] < KILL_TOTAL
    assert saved["progress"]["step"] >= max(steps_seen)
    assert not (tmp_path / "run" / "summary.json").exists()

    resumed = _script(*argv, "--logdir", str(tmp_path / "run"), "--resume")
    _, err = resumed.communicate(timeout=300)
    assert resumed.returncode == 0, err
    _, err = full.communicate(timeout=300)
    assert full.returncode == 0, err
    a, b = load_checkpoint(tmp_path / "full" / "checkpoint.pt"), load_checkpoint(ckpt)
    assert b["progress"]["step"] == KILL_TOTAL
    for key, value in a["agent"]["q_net"].items():
        assert torch.equal(value, b["agent"]["q_net"][key]), key
    assert (tmp_path / "full" / "evals.csv").read_text() == (tmp_path / "run" / "evals.csv").read_text()


def test_sigterm_saves_a_checkpoint_at_the_episode_end_then_exits_143(tmp_path: Path) -> None:
    """128 + 15, as a shell reports a process ended by SIGTERM: a script can tell a stopped run from a
    finished one (exit 0)."""
    logdir = tmp_path / "run"
    proc = _script(*COMMON, "--logdir", str(logdir))
    _wait_for(logdir / "checkpoint.pt", proc)
    first = load_checkpoint(logdir / "checkpoint.pt")["progress"]["step"]
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err
    assert "signal 15" in err and "Traceback" not in err
    summary = json.loads((logdir / "summary.json").read_text())
    saved = load_checkpoint(logdir / "checkpoint.pt")["progress"]
    assert summary["interrupted"] is True and summary["total_steps"] < TOTAL
    assert saved["step"] == summary["total_steps"] >= first  # saved at the stop, not an older checkpoint
    assert _temp_files(logdir) == []


@dataclass
class _DoubleSignal:
    returncode: int
    stderr: str
    seconds_after_second_signal: float
    step_before: int
    logdir: Path


@pytest.fixture(scope="module")
def double_sigterm(tmp_path_factory: pytest.TempPathFactory) -> _DoubleSignal:
    """A run sent SIGTERM twice, 50 ms apart, while it trains (long after its first checkpoint)."""
    logdir = tmp_path_factory.mktemp("double") / "run"
    proc = _script(*COMMON, "--total-steps", "50000", "--logdir", str(logdir))
    _wait_for(logdir / "checkpoint.pt", proc)
    time.sleep(1.0)
    step_before = load_checkpoint(logdir / "checkpoint.pt")["progress"]["step"]
    proc.send_signal(signal.SIGTERM)
    time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    sent = time.monotonic()
    _, err = proc.communicate(timeout=120)
    return _DoubleSignal(proc.returncode, err, time.monotonic() - sent, step_before, logdir)


def test_a_second_signal_stops_at_once_and_keeps_the_last_checkpoint(double_sigterm: _DoubleSignal) -> None:
    assert double_sigterm.returncode != 0  # not a finished run
    assert double_sigterm.seconds_after_second_signal < 10
    saved = load_checkpoint(double_sigterm.logdir / "checkpoint.pt")["progress"]
    assert double_sigterm.step_before <= saved["step"] < 50000
    assert _temp_files(double_sigterm.logdir) == []


def test_a_second_signal_is_reported_in_one_line(double_sigterm: _DoubleSignal) -> None:
    err = double_sigterm.stderr
    assert "Traceback" not in err, err
    # 143 (128 + SIGTERM): the loop stopped at once; -SIGTERM: the signal came after the run had restored the
    # default handler
    assert double_sigterm.returncode in (143, -signal.SIGTERM), double_sigterm.returncode


# --- checkpoints that must be refused ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A short finished CartPole run (checkpoint.pt, summary.json, evals.csv) made in this process."""
    logdir = tmp_path_factory.mktemp("finished") / "run"
    torch.set_num_threads(1)
    assert dqn_main([*SHORT, "--logdir", str(logdir)]) == 0
    return logdir


def _copy_run(finished_run: Path, tmp_path: Path) -> Path:
    logdir = tmp_path / "run"
    shutil.copytree(finished_run, logdir)
    return logdir


def _snapshot(logdir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(logdir.iterdir()) if p.is_file()}


def _refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    """Run ``run_dqn.main(argv)``; assert exit status 2 and one line on stderr; return that line."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        dqn_main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2, err
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("flags", "keys"),
    [
        (["--env", "Acrobot-v1"], ["env"]),
        (["--heads", "5"], ["heads"]),
        (["--hidden", "32", "32"], ["hidden"]),
        (["--env", "Acrobot-v1", "--heads", "3", "--hidden", "16", "64"], ["env", "heads", "hidden"]),
    ],
)
def test_a_checkpoint_from_another_config_is_refused_naming_what_differs(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], flags: list[str], keys: list[str]
) -> None:
    logdir = _copy_run(finished_run, tmp_path)
    before = _snapshot(logdir)
    err = _refused([*SHORT, "--total-steps", "800", *flags, "--logdir", str(logdir), "--resume"], capsys)
    assert "incompatible" in err
    for key in keys:
        assert f"{key}: saved=" in err, err
    others = {"env", "heads", "hidden", "seed", "eta_min", "eta_max", "lr", "method", "buffer_size"} - set(keys)
    assert not any(f"{key}: saved=" in err for key in others), err
    assert _snapshot(logdir) == before  # nothing written, nothing overwritten


def test_a_finished_run_can_be_extended_with_a_larger_total_steps(tmp_path: Path) -> None:
    logdir = tmp_path / "run"
    argv = [*SHORT, "--buffer-size", "1000000", "--logdir", str(logdir)]  # the default buffer: larger than the run
    assert dqn_main(argv) == 0
    assert dqn_main([*argv, "--total-steps", "800", "--resume"]) == 0
    assert json.loads((logdir / "summary.json").read_text())["total_steps"] == 800


def test_resuming_with_a_total_below_the_steps_done_is_refused_naming_both(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Before, the run was accepted and summary.json said total_steps 400 next to config.total_steps 200."""
    logdir = _copy_run(finished_run, tmp_path)
    before = _snapshot(logdir)
    err = _refused([*SHORT, "--total-steps", "200", "--logdir", str(logdir), "--resume"], capsys)
    assert "--total-steps 200 is below the 400 steps this run has already done" in err, err
    assert _snapshot(logdir) == before


def test_resuming_with_the_default_lr_written_out_is_the_same_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Adam's default lr left out, then given as 1e-3: the same run (before: 'lr: saved=None current=0.001')."""
    logdir = tmp_path / "run"
    assert dqn_main([*SHORT, "--optimizer", "adam", "--logdir", str(logdir)]) == 0
    assert dqn_main([*SHORT, "--optimizer", "adam", "--lr", "0.001", "--total-steps", "500", "--logdir",
                     str(logdir), "--resume"]) == 0
    err = _refused([*SHORT, "--optimizer", "adam", "--lr", "0.01", "--total-steps", "600", "--logdir", str(logdir),
                    "--resume"], capsys)
    assert "--lr: saved=0.001 current=0.01" in err and "None" not in err, err


class _Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _torch_bytes(obj: Any) -> bytes:
    blob = io.BytesIO()
    torch.save(obj, blob)
    return blob.getvalue()


def _flip_in_tensor_data(good: bytes) -> bytes:
    """Flip one byte inside the stored values of the largest tensor (the replay buffer's observations)."""
    import zipfile

    with zipfile.ZipFile(io.BytesIO(good)) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.compress_size)
    header = 30 + len(info.filename.encode()) + len(info.extra)  # local file header: fixed part, name, extra
    data = bytearray(good)
    data[info.header_offset + header + info.compress_size // 2] ^= 0x40
    return bytes(data)


def _valid_format(good: bytes, tmp: Path, change: Callable[[dict[str, Any]], None]) -> bytes:
    """A checkpoint that save_checkpoint wrote (format marker and all) whose content is not a DQN run's."""
    state = torch.load(io.BytesIO(good), weights_only=True)
    state.pop(META_KEY)
    change(state)
    save_checkpoint(tmp / "staging.pt", state)
    return (tmp / "staging.pt").read_bytes()


def _wrong_shape(state: dict[str, Any]) -> None:
    q = state["agent"]["q_net"]
    q["body.0.weight"] = torch.zeros(3)


def _missing(key: str) -> Callable[[dict[str, Any]], None]:
    return lambda state: state.pop(key)


CHECKPOINTS: list[Any] = [
    pytest.param(lambda good, tmp: b"", id="empty"),
    pytest.param(lambda good, tmp: good[: len(good) // 2], id="truncated-half"),
    pytest.param(lambda good, tmp: good[:-1], id="truncated-last-byte"),
    pytest.param(lambda good, tmp: good[:100], id="truncated-header"),
    pytest.param(lambda good, tmp: random.Random(0).randbytes(len(good)), id="random-bytes"),
    pytest.param(lambda good, tmp: b"\0" * 4096, id="zeros"),
    pytest.param(lambda good, tmp: b"checkpoint.pt\n", id="text"),
    pytest.param(lambda good, tmp: pickle.dumps({"x": _Evil(tmp / "pwned")}), id="pickle-os-system"),
    pytest.param(
        lambda good, tmp: pickle.dumps({META_KEY: {"format": FORMAT, "version": 1}, "x": _Evil(tmp / "pwned")}),
        id="pickle-os-system-with-marker",
    ),
    pytest.param(lambda good, tmp: _torch_bytes({"x": _Evil(tmp / "pwned")}), id="torch-save-os-system"),
    pytest.param(lambda good, tmp: _torch_bytes({"step": 1}), id="foreign-torch-file"),
    pytest.param(lambda good, tmp: _torch_bytes({META_KEY: {"format": FORMAT, "version": 99}}), id="newer-version"),
    pytest.param(
        lambda good, tmp: _flip_in_tensor_data(good),
        id="bit-flip-in-tensor-data",
    ),
    pytest.param(
        lambda good, tmp: _valid_format(good, tmp, _missing("agent")),
        id="well-formed-without-agent",
    ),
    pytest.param(
        lambda good, tmp: _valid_format(good, tmp, _wrong_shape),
        id="well-formed-wrong-shapes",
    ),
]


@pytest.mark.parametrize("make", CHECKPOINTS)
def test_a_bad_checkpoint_file_is_refused_in_one_line_without_running_its_code(
    finished_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    make: Callable[[bytes, Path], bytes],
) -> None:
    logdir = _copy_run(finished_run, tmp_path)
    (logdir / "summary.json").unlink()  # an interrupted run: only its checkpoint
    marker = tmp_path / "pwned"
    ckpt = logdir / "checkpoint.pt"
    ckpt.write_bytes(make(ckpt.read_bytes(), tmp_path))
    before = _snapshot(logdir)
    err = _refused([*SHORT, "--total-steps", "800", "--logdir", str(logdir), "--resume"], capsys)
    assert "checkpoint" in err
    assert not marker.exists()
    assert _snapshot(logdir) == before


def test_the_malicious_payload_is_live_when_unpickled_unsafely(tmp_path: Path) -> None:
    """Positive control for the os.system rows above: the marker does appear when the pickle is trusted."""
    pickle.loads(pickle.dumps({"x": _Evil(tmp_path / "pwned")}))
    assert (tmp_path / "pwned").exists()


def test_a_checkpoint_path_that_is_a_folder_is_refused_in_one_line(
    finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logdir = _copy_run(finished_run, tmp_path)
    (logdir / "summary.json").unlink()
    (logdir / "checkpoint.pt").unlink()
    (logdir / "checkpoint.pt").mkdir()
    _refused([*SHORT, "--total-steps", "800", "--logdir", str(logdir), "--resume"], capsys)


def test_a_malicious_checkpoint_in_a_real_process_runs_nothing_and_prints_one_line(tmp_path: Path) -> None:
    logdir = tmp_path / "run"
    logdir.mkdir()
    marker = tmp_path / "pwned"
    (logdir / "checkpoint.pt").write_bytes(pickle.dumps({"x": _Evil(marker)}))
    proc = _script(*SHORT, "--logdir", str(logdir), "--resume")
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert "not a valid checkpoint" in err
    assert not marker.exists()


# --- a full disk ---------------------------------------------------------------------------------------------

ENOSPC_CONFIG = {
    "env": "CartPole-v1",
    "total_steps": 1500,
    "learning_starts": 100,
    "checkpoint_every": 300,
    "eval_every": 500,
    "eval_episodes": 1,
    "buffer_size": 2000,
}


class _FullDisk:
    """``torch.save`` as seen by alrao_rl.checkpoint: the first ``good`` saves work; the next one writes half of
    its bytes, then fails with ENOSPC. Keeps the checkpoint that was on disk just before the failure."""

    def __init__(self, real_save: Callable[..., None], ckpt: Path, good: int) -> None:
        self.real_save, self.ckpt, self.good = real_save, ckpt, good
        self.calls = 0
        self.before_failure: bytes | None = None

    def __call__(self, obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        self.calls += 1
        if self.calls <= self.good:
            self.real_save(obj, f, *args, **kwargs)
            return
        self.before_failure = self.ckpt.read_bytes()
        blob = io.BytesIO()
        self.real_save(obj, blob, *args, **kwargs)
        f.write(blob.getvalue()[: len(blob.getvalue()) // 2])
        f.flush()
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_a_full_disk_while_checkpointing_keeps_the_previous_checkpoint_and_the_run_resumes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    logdir = tmp_path / "run"
    logdir.mkdir()
    full_disk = _FullDisk(torch.save, logdir / "checkpoint.pt", good=2)
    monkeypatch.setattr(ckpt_mod.torch, "save", full_disk)
    config = DQNConfig(**ENOSPC_CONFIG)  # type: ignore[arg-type]
    with pytest.raises(OSError) as info:
        train(config, str(logdir), progress=False)
    assert info.value.errno == errno.ENOSPC and full_disk.calls == 3
    monkeypatch.undo()
    assert full_disk.before_failure is not None
    assert (logdir / "checkpoint.pt").read_bytes() == full_disk.before_failure  # byte for byte
    assert _temp_files(logdir) == []
    kept = load_checkpoint(logdir / "checkpoint.pt")
    assert 0 < kept["progress"]["step"] < config.total_steps
    summary = train(config, str(logdir), resume=True, progress=False)  # space is back: the run continues
    assert summary["total_steps"] == config.total_steps and not summary["interrupted"]


def test_run_dqn_reports_a_full_disk_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(ckpt_mod.torch, "save", _FullDisk(torch.save, tmp_path / "run" / "checkpoint.pt", good=1))
    with pytest.raises(SystemExit) as exc:
        dqn_main([*SHORT, "--logdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code != 0 and len(err.splitlines()) == 1 and "No space left" in err
