"""scripts/run_cifar.py and scripts/run_ptb.py: smoke runs on tiny real-format data, resume, bad input."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

from test_cifar_data import _fake_batches, _write_binary, _write_python  # noqa: E402
from test_supervised_train import PTB_LINES  # noqa: E402

from alrao_cli.run_cifar import main as cifar_main  # noqa: E402
from alrao_cli.run_ptb import main as ptb_main  # noqa: E402
from alrao_rl.supervised.train import EVALS_COLUMNS, SUMMARY_KEYS  # noqa: E402

REAL_PTB = Path("/work/shared/data/ptb")
TINY_CIFAR = ["--width", "0.0625", "--limit-train", "16", "--batch-size", "8", "--epochs", "1", "--no-progress"]
TINY_PTB = ["--batch-size", "2", "--bptt", "30", "--epochs", "1", "--no-progress"]


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)


@pytest.fixture(scope="module")
def cifar_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cifar")
    batches = _fake_batches(records=20)  # 100 training images (80 train / 20 valid), 20 test images
    _write_python(root / "py", batches)
    _write_binary(root / "bin", batches)
    return {"python": root / "py", "binary": root / "bin"}


@pytest.fixture(scope="module")
def ptb_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ptb")
    for name, lines in (("train", PTB_LINES * 2), ("valid", PTB_LINES[:3]), ("test", PTB_LINES[3:])):
        (root / f"ptb.{name}.txt").write_text("\n".join(lines) + "\n")
    return root


def _check_outputs(logdir: Path, epochs: int, stdout: str) -> dict:
    with open(logdir / "evals.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == list(EVALS_COLUMNS) and len(rows) == epochs + 1
    summary = json.loads((logdir / "summary.json").read_text())
    assert list(summary) == list(SUMMARY_KEYS) and summary["epochs"] == epochs
    assert json.loads(stdout.strip().splitlines()[-1]) == summary
    return summary


@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_cifar_smoke_run_reads_either_format_and_writes_outputs(
    cifar_dirs: dict[str, Path], tmp_path: Path, fmt: str, capsys: pytest.CaptureFixture[str]
) -> None:
    logdir = tmp_path / "run"
    assert cifar_main(["--data-dir", str(cifar_dirs[fmt]), *TINY_CIFAR, "--logdir", str(logdir)]) == 0
    summary = _check_outputs(logdir, 1, capsys.readouterr().out)
    assert summary["task"] == "cifar10" and summary["method"] == "alrao" and summary["heads"] == 10
    assert (summary["eta_min"], summary["eta_max"]) == (1e-5, 10.0)


@pytest.mark.parametrize(("flags", "method", "lr"), [(["--optimizer", "sgd", "--lr", "0.05"], "sgd", 0.05),
                                                     (["--optimizer", "adam"], "adam", 1e-3)])
def test_cifar_baselines_have_one_output_layer(
    cifar_dirs: dict[str, Path], tmp_path: Path, flags: list[str], method: str, lr: float,
    capsys: pytest.CaptureFixture[str]
) -> None:
    logdir = tmp_path / "run"
    cifar_main(["--data-dir", str(cifar_dirs["python"]), *TINY_CIFAR, "--model", "resnet18", *flags,
                "--logdir", str(logdir)])
    summary = _check_outputs(logdir, 1, capsys.readouterr().out)
    assert (summary["method"], summary["lr"], summary["heads"], summary["eta_min"]) == (method, lr, 1, None)
    from alrao_rl.checkpoint import load_checkpoint

    assert "model.head.weight" in load_checkpoint(logdir / "checkpoint.pt")["net"]


def test_cifar_resume_continues_the_epoch_counter(
    cifar_dirs: dict[str, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logdir = tmp_path / "run"
    common = ["--data-dir", str(cifar_dirs["binary"]), *TINY_CIFAR[:-3], "--no-progress", "--logdir", str(logdir)]
    cifar_main([*common, "--epochs", "1"])
    capsys.readouterr()
    cifar_main([*common, "--epochs", "2", "--resume"])
    _check_outputs(logdir, 2, capsys.readouterr().out)


def test_ptb_smoke_run_with_three_files_reports_bits(
    ptb_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logdir = tmp_path / "run"
    files = [f"--{s}-file={ptb_dir / f'ptb.{s}.txt'}" for s in ("train", "valid", "test")]
    assert ptb_main([*files, *TINY_PTB, "--logdir", str(logdir)]) == 0
    summary = _check_outputs(logdir, 1, capsys.readouterr().out)
    assert summary["task"] == "ptb-char" and summary["heads"] == 6
    assert (summary["eta_min"], summary["eta_max"]) == (1e-3, 100.0)
    assert 0 < summary["test_loss"] < 8  # bits per character: log2 of ~30 symbols is ~5


def test_ptb_data_dir_word_level_and_resume(ptb_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    logdir = tmp_path / "run"
    common = ["--data-dir", str(ptb_dir), "--level", "word", "--optimizer", "adam", *TINY_PTB[:-3], "--no-progress",
              "--logdir", str(logdir)]
    ptb_main([*common, "--epochs", "1"])
    capsys.readouterr()
    ptb_main([*common, "--epochs", "2", "--resume"])
    summary = _check_outputs(logdir, 2, capsys.readouterr().out)
    assert summary["task"] == "ptb-word"


def test_ptb_two_spawned_processes_write_one_run(
    ptb_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    logdir = tmp_path / "run"
    assert ptb_main(["--data-dir", str(ptb_dir), *TINY_PTB, "--nproc", "2", "--device", "cpu",
                     "--logdir", str(logdir)]) == 0
    _check_outputs(logdir, 1, capsys.readouterr().out)


@pytest.mark.slow
def test_ptb_runs_on_the_real_files_with_test_halves(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The demo of the README: train on ptb.valid.txt, validate and test on the halves of ptb.test.txt."""
    lines = (REAL_PTB / "ptb.test.txt").read_text().splitlines(keepends=True)
    (tmp_path / "valid.txt").write_text("".join(lines[: len(lines) // 2]))
    (tmp_path / "test.txt").write_text("".join(lines[len(lines) // 2 :]))
    logdir = tmp_path / "run"
    ptb_main(["--train-file", str(REAL_PTB / "ptb.valid.txt"), "--valid-file", str(tmp_path / "valid.txt"),
              "--test-file", str(tmp_path / "test.txt"), "--epochs", "1", "--no-progress", "--logdir", str(logdir)])
    summary = _check_outputs(logdir, 1, capsys.readouterr().out)
    assert summary["test_loss"] < 4.0  # bits per character; uniform over ~50 symbols is 5.6


def _ptb_files(ptb_dir: Path) -> list[str]:
    return [f"--{s}-file={ptb_dir / f'ptb.{s}.txt'}" for s in ("train", "valid", "test")]


PTB_BAD = [
    (["--train-file=/nonexistent/ptb.train.txt", "--valid-file=V", "--test-file=T"], "PTB file not found"),
    (["FILES", "--level", "byte"], "invalid choice: 'byte'"),
    (["FILES", "--eta-min", "0"], "--eta-min must be a finite number > 0, got 0.0"),
    (["FILES", "--eta-min", "1", "--eta-max", "0.1"], "--eta-min must be <= --eta-max"),
    (["FILES", "--alrao", "--optimizer", "sgd", "--lr", "1"], "not allowed with argument --alrao"),
    (["FILES", "--optimizer", "sgd"], "method 'sgd' needs a learning rate"),
    (["FILES", "--data-dir", "DIR"], "either --data-dir or --train-file"),
    (["--train-file", "x"], "give --data-dir, or all three"),
    (["--data-dir", "/nonexistent"], "is not a folder"),
    (["FILES", "--nproc", "0"], "--nproc must be >= 1, got 0"),
    (["FILES", "--bptt", "0"], "--bptt must be an integer >= 1, got 0"),
    (["FILES", "--heads", "abc"], "invalid int value: 'abc'"),
    (["FILES", "--batch-size", "500"], "too few for 500 streams"),
    (["FILES", "--epochs", "-1"], "epochs must be an integer >= 1, got -1"),
]


@pytest.mark.parametrize(("argv", "message"), PTB_BAD)
def test_ptb_bad_input_exits_2_with_one_line(
    ptb_dir: Path, tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    expanded: list[str] = []
    for arg in argv:
        expanded += _ptb_files(ptb_dir) if arg == "FILES" else [str(ptb_dir) if arg == "DIR" else arg]
    with pytest.raises(SystemExit) as exc:
        ptb_main([*expanded, "--logdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


CIFAR_BAD = [
    (["--data-dir", "/nonexistent"], "--data-dir '/nonexistent' does not exist"),
    ([], "the following arguments are required: --data-dir"),
    (["DATA", "--model", "alexnet"], "invalid choice: 'alexnet'"),
    (["DATA", "--width", "0"], "width must be a finite number > 0"),
    (["DATA", "--valid-size", "1000"], "--valid-size must lie in 1..99"),
    (["DATA", "--eta-min", "0"], "--eta-min must be a finite number > 0, got 0.0"),
    (["DATA", "--alrao", "--optimizer", "adam"], "not allowed with argument --alrao"),
    (["DATA", "--optimizer", "rmsprop"], "invalid choice: 'rmsprop'"),
    (["DATA", "--lr", "-1"], "lr must be a finite number > 0"),
    (["DATA", "--device", "tpu"], "device must be"),
]


@pytest.mark.parametrize(("argv", "message"), CIFAR_BAD)
def test_cifar_bad_input_exits_2_with_one_line(
    cifar_dirs: dict[str, Path], tmp_path: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = [a for arg in argv for a in (["--data-dir", str(cifar_dirs["python"])] if arg == "DATA" else [arg])]
    with pytest.raises(SystemExit) as exc:
        cifar_main([*argv, "--logdir", str(tmp_path / "run")])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1, err
    assert not (tmp_path / "run").exists()


def test_logdir_that_is_a_file_or_holds_a_run_is_refused(
    ptb_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("keep me")
    with pytest.raises(SystemExit) as exc:
        ptb_main([*_ptb_files(ptb_dir), "--logdir", str(a_file)])
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and "is a file" in err and len(err.splitlines()) == 1
    assert a_file.read_text() == "keep me"
    run = tmp_path / "run"
    run.mkdir()
    (run / "summary.json").write_text("{}")
    for extra, message in (([], "already holds a run"), (["--resume"], "--resume: no checkpoint.pt")):
        with pytest.raises(SystemExit) as exc:
            ptb_main([*_ptb_files(ptb_dir), "--logdir", str(run), *extra])
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and message in err and len(err.splitlines()) == 1
    assert (run / "summary.json").read_text() == "{}"


def test_bad_input_in_a_subprocess_has_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "run_cifar.py"), "--data-dir", str(tmp_path / "none"),
         "--logdir", str(tmp_path / "run")],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert f"--data-dir {str(tmp_path / 'none')!r} does not exist" in proc.stderr


@pytest.mark.parametrize(("sig", "status"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_after_the_epoch_with_a_checkpoint_and_exit_128_plus_its_number(
    ptb_dir: Path, tmp_path: Path, sig: int, status: int
) -> None:
    logdir = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "run_ptb.py"), *_ptb_files(ptb_dir), *TINY_PTB, "--epochs", "100000",
         "--patience", "100000", "--logdir", str(logdir)],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=tmp_path,
    )
    deadline = time.monotonic() + 120
    while not (logdir / "checkpoint.pt").exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == status, err
    assert "Traceback" not in err
    from alrao_rl.checkpoint import load_checkpoint

    assert load_checkpoint(logdir / "checkpoint.pt")["progress"]["epoch"] >= 1
    assert not (logdir / "summary.json").exists() and json.loads(out.strip().splitlines()[-1])["interrupted"] is True
