"""Bad input to every script: exit status 2, exactly one line on stderr, no traceback, nothing overwritten.

One table per script (``scripts/run_dqn.py``, ``run_cifar.py``, ``run_ptb.py``, ``compare.py``) of bad values,
conflicting flags, missing or hostile files and unusable output folders, plus rows generated from each parser for
every typed flag (a word where a number is due, a value outside the choices, too few values, a value given to a
switch). Rows run in this process through ``main(argv)`` with training replaced by a stub that fails the test if
the input is accepted; the output folder already holds a file, which must keep its content and be alone. One
subprocess per script proves the same at process level.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
import pickle
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_cifar_data import _fake_batches, _write_python  # noqa: E402
from test_supervised_train import PTB_LINES  # noqa: E402

from alrao_rl.supervised.cifar import PYTHON_FILES  # noqa: E402

NAMES = ("run_dqn", "run_cifar", "run_ptb", "compare")
MISSING_SCRIPT = {name: not (SCRIPTS / f"{name}.py").exists() for name in NAMES}
OUT_FLAG = {"run_dqn": "--logdir", "run_cifar": "--logdir", "run_ptb": "--logdir", "compare": "--out"}
KEEP = "keep me\n"


class _AcceptedError(Exception):
    """Raised by the training stub: the script accepted input the row says it must refuse."""


def _main(name: str) -> Callable[[list[str]], int]:
    return importlib.import_module(f"alrao_cli.{name}").main  # type: ignore[no-any-return]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every training entry point the scripts reach raises :class:`_AcceptedError` instead of training."""
    import agents.dqn
    import alrao_rl.supervised.train as supervised

    def accepted(*_args: Any, **_kwargs: Any) -> None:
        raise _AcceptedError("the script accepted this input and started training")

    monkeypatch.setattr(agents.dqn, "train", accepted)
    monkeypatch.setattr(supervised, "train_classifier", accepted)
    monkeypatch.setattr(supervised, "spawn_train_classifier", accepted)
    if not MISSING_SCRIPT["compare"]:
        import agents.compare

        monkeypatch.setattr(agents.compare, "run_sweep", accepted)


class _EvilPickle:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Tiny CIFAR-10 (python format) and PTB (word files) folders, and hostile variants."""
    root = tmp_path_factory.mktemp("data")
    batches = _fake_batches(records=20)
    _write_python(root / "cifar", batches)
    _write_python(root / "cifar-evil", batches)
    marker = root / "pwned"
    (root / "cifar-evil" / PYTHON_FILES[0]).write_bytes(pickle.dumps({b"data": _EvilPickle(marker)}))
    _write_python(root / "cifar-truncated", batches)
    batch = root / "cifar-truncated" / PYTHON_FILES[2]
    batch.write_bytes(batch.read_bytes()[: len(batch.read_bytes()) // 2])
    (root / "ptb").mkdir()
    for name, lines in (("train", PTB_LINES * 2), ("valid", PTB_LINES[:3]), ("test", PTB_LINES[3:])):
        (root / "ptb" / f"ptb.{name}.txt").write_text("\n".join(lines) + "\n")
    (root / "garbage.txt").write_bytes(bytes(range(256)) * 8)
    (root / "unknown.txt").write_text(" ~~~ ### ^^^ \n" * 3)  # symbols absent from the PTB training text
    (root / "ptb-unknown").mkdir()
    for name, text in (("train", "\n".join(PTB_LINES * 2)), ("valid", " ~~~ ### ^^^ \n" * 3), ("test", PTB_LINES[3])):
        (root / "ptb-unknown" / f"ptb.{name}.txt").write_text(text + "\n")
    (root / "empty.txt").write_bytes(b"")
    return {"root": root, "marker": marker}


def _expand(argv: str, paths: dict[str, Path]) -> list[str]:
    return [token.format_map(paths) for token in shlex.split(argv)]


@dataclass(frozen=True)
class Row:
    """One bad command line: ``argv`` (``{placeholders}`` filled at run time) and what stderr must say."""

    script: str
    argv: str
    message: str

    def param(self, *marks: Any) -> Any:
        skip = pytest.mark.skip(reason=f"scripts/{self.script}.py does not exist yet")
        all_marks = [*marks, *([skip] if MISSING_SCRIPT[self.script] else [])]
        return pytest.param(self, marks=all_marks, id=f"{self.script} {self.argv}")


D = "--data-dir {root}/cifar"
P = "--train-file {root}/ptb/ptb.train.txt --valid-file {root}/ptb/ptb.valid.txt --test-file {root}/ptb/ptb.test.txt"
CP = "--task ptb --data-dir {root}/ptb"
CC = "--task cifar --data-dir {root}/cifar"
LOGDIR_ROWS = [
    ("{root}/afile", "is a file, not a folder"),
    ("{root}/afile/sub", "Not a directory"),
    ("{held}", "already holds a run"),
]

DQN = [
    ("--eta-min 0", "--eta-min must be a finite number > 0, got 0.0"),
    ("--eta-min nan", "--eta-min must be a finite number > 0, got nan"),
    ("--eta-max inf", "--eta-max must be a finite number > 0, got inf"),
    ("--eta-min 1e-400", "--eta-min must be a finite number > 0, got 0.0"),
    ("--eta-min 1 --eta-max 0.1", "--eta-min must be <= --eta-max"),
    ("--optimizer sgd --lr nan", "--lr must be a finite number > 0, got nan"),
    ("--optimizer adam --lr -1", "--lr must be a finite number > 0"),
    ("--optimizer sgd", "method 'sgd' needs a learning rate (--lr)"),
    ("--alrao --optimizer adam", "not allowed with argument --alrao"),
    ("--heads 0", "--heads must be >= 1, got 0"),
    ("--total-steps 0", "--total-steps must be >= 1, got 0"),
    ("--total-steps 1e6", "invalid int value: '1e6'"),
    ("--eval-every 0", "--eval-every must be >= 1"),
    ("--eval-episodes 0", "--eval-episodes must be >= 1"),
    ("--batch-size 0", "--batch-size must be >= 1"),
    ("--buffer-size 0", "--buffer-size must be >= 1"),
    ("--buffer-size 100000000000", "--buffer-size 100000000000 needs 3,700,000,000,000 bytes"),
    ("--train-freq 0", "--train-freq must be >= 1"),
    ("--checkpoint-every 0", "--checkpoint-every must be >= 1"),
    ("--learning-starts -1", "--learning-starts must be >= 0, got -1"),
    ("--exploration-steps -1", "--exploration-steps must be >= 0, got -1"),
    ("--n-bins 1", "--n-bins must be >= 2, got 1"),
    ("--n-bins 100000000", "more than the limit"),
    ("--hidden 0 64", "--hidden must be two widths >= 1"),
    ("--hidden 64 64 64", "unrecognized arguments: 64"),
    ("--gamma 1.5", r"--gamma must be in [0, 1], got 1.5"),
    ("--gamma nan", "--gamma must be in [0, 1], got nan"),
    ("--tau 0", "--tau must be in (0, 1], got 0.0"),
    ("--tau nan", "--tau must be in (0, 1]"),
    ("--eps-start 2", "--eps-start must be in [0, 1]"),
    ("--eps-end -0.1", "--eps-end must be in [0, 1]"),
    ("--max-weight 0", "--max-weight must be > 0"),
    ("--max-weight nan", "--max-weight must be > 0, got nan"),
    ("--td-variance bogus", "--td-variance must be 'unit', 'running' or 'switch'"),
    ("--averaging bogus", "--averaging must be 'filtered' or 'predictive'"),
    ("--env Nope-v0", "Unknown environment id 'Nope-v0'"),
    ("--env ''", "Malformed environment id"),
    ("--env FrozenLake-v1", "Observation space must be a 1-D Box"),
    ("--env CarRacing-v3", "Observation space must be a 1-D Box"),
    ("--no-such-flag", "unrecognized arguments: --no-such-flag"),
    ("positional", "unrecognized arguments: positional"),
    ("--resume", "--resume: no checkpoint.pt"),
]
CIFAR = [
    ("", "the following arguments are required: --data-dir"),
    ("--data-dir {root}/missing", "--data-dir '{root}/missing' does not exist"),
    ("--data-dir {root}/garbage.txt", "--data-dir '{root}/garbage.txt' is not a folder"),
    ("--data-dir {root}/cifar-evil", "global posix.system is not allowed"),
    ("--data-dir {root}/cifar-truncated", "not a valid CIFAR-10 python batch"),
    (f"{D} --width 0", "--width must be a finite number > 0"),
    (f"{D} --width nan", "--width must be a finite number > 0, got nan"),
    (f"{D} --width inf", "--width must be a finite number > 0, got inf"),
    (f"{D} --valid-size 1000", "--valid-size must lie in 1..99"),
    (f"{D} --valid-size 0", "--valid-size must be an integer >= 1"),
    (f"{D} --limit-train 0", "--limit-train must be an integer >= 1"),
    (f"{D} --epochs 0", "--epochs must be an integer >= 1"),
    (f"{D} --patience 0", "--patience must be an integer >= 1"),
    (f"{D} --batch-size 0", "--batch-size must be an integer >= 1"),
    (f"{D} --eval-batch-size 0", "--eval-batch-size must be an integer >= 1"),
    (f"{D} --log-every 0", "--log-every must be an integer >= 1"),
    (f"{D} --heads 0", "--heads must be an integer >= 1"),
    (f"{D} --eta-min 0", "--eta-min must be a finite number > 0"),
    (f"{D} --eta-min 1 --eta-max 0.1", "--eta-min must be <= --eta-max"),
    (f"{D} --alrao --optimizer adam", "not allowed with argument --alrao"),
    (f"{D} --optimizer sgd", "method 'sgd' needs a learning rate (--lr)"),
    (f"{D} --optimizer sgd --lr -1", "--lr must be a finite number > 0"),
    (f"{D} --max-weight 0", "--max-weight must be > 0"),
    (f"{D} --device tpu", "--device must be 'auto', 'cpu', 'cuda' or 'cuda:K'"),
    (f"{D} --device cpu:0", "--device must be"),
    (f"{D} --nproc 0", "--nproc must be >= 1, got 0"),
    (f"{D} --nproc 1000", "cannot feed 1000 processes"),
    (f"{D} --level char", "unrecognized arguments: --level char"),
    (f"{D} --bptt 5", "unrecognized arguments: --bptt 5"),
    (f"{D} --resume", "--resume: no checkpoint.pt"),
]
PTB = [
    ("", "give --data-dir, or all three"),
    ("--train-file {root}/ptb/ptb.train.txt", "give --data-dir, or all three"),
    (f"{P} --data-dir {{root}}/ptb", "either --data-dir or --train-file"),
    ("--data-dir {root}/missing", "is not a folder"),
    ("--data-dir {root}/garbage.txt", "is not a folder"),
    ("--data-dir {root}", "PTB file not found"),
    (
        "--train-file {root}/missing --valid-file {root}/ptb/ptb.valid.txt --test-file {root}/ptb/ptb.test.txt",
        "PTB file not found",
    ),
    (
        "--train-file {root}/empty.txt --valid-file {root}/ptb/ptb.valid.txt --test-file {root}/ptb/ptb.test.txt",
        "PTB file is empty",
    ),
    (
        "--train-file {root}/garbage.txt --valid-file {root}/ptb/ptb.valid.txt --test-file {root}/ptb/ptb.test.txt",
        "--train-file {root}/garbage.txt: not UTF-8 text (byte 0x80 at offset 128)",
    ),
    (
        "--train-file {root}/ptb/ptb.train.txt --valid-file {root}/ptb/ptb.valid.txt --test-file {root}/garbage.txt",
        "--test-file {root}/garbage.txt: not UTF-8 text",
    ),
    (f"{P} --bptt 0", "--bptt must be an integer >= 1, got 0"),
    (f"{P} --batch-size 0", "--batch-size must be an integer >= 1"),
    (f"{P} --batch-size 500", "too few for 500 streams"),
    (f"{P} --epochs -1", "--epochs must be an integer >= 1, got -1"),
    (f"{P} --heads 0", "--heads must be an integer >= 1"),
    (f"{P} --nproc 0", "--nproc must be >= 1"),
    (f"{P} --eta-min 0", "--eta-min must be a finite number > 0"),
    (f"{P} --alrao --optimizer sgd --lr 1", "not allowed with argument --alrao"),
    (f"{P} --optimizer sgd", "method 'sgd' needs a learning rate (--lr)"),
    (f"{P} --device tpu", "--device must be"),
    (f"{P} --width 2", "unrecognized arguments: --width 2"),
    (f"{P} --model lstm", "unrecognized arguments: --model lstm"),
    (f"{P} --resume", "--resume: no checkpoint.pt"),
]
COMPARE = [
    ("--seeds 0", "--seeds must be >= 1, got 0"),
    ("--methods ,,", "--methods is empty"),
    ("--methods foo", "unknown method 'foo'"),
    ("--methods alrao,alrao", "a method is given twice"),
    ("--sgd-grid abc", "--sgd-grid: 'abc' is not a number"),
    ("--sgd-grid 0.1,-1", "rates must be finite numbers > 0, got -1"),
    ("--sgd-grid nan", "rates must be finite numbers > 0, got nan"),
    ("--sgd-grid inf", "rates must be finite numbers > 0, got inf"),
    ("--eta-min 0", "--eta-min must be a finite number > 0"),
    ("--eta-min 1 --eta-max 0.1", "--eta-min must be <= --eta-max"),
    ("--heads 0", "--heads must be >= 1, got 0"),
    ("--total-steps 0", "--total-steps must be >= 1"),
    ("--eval-every 0", "--eval-every must be >= 1"),
    ("--eval-episodes 0", "--eval-episodes must be >= 1"),
    ("--eval-episodes 100000", "--eval-episodes must be <= "),
    ("--test-episodes 0", "--test-episodes must be >= 1"),
    ("--floor-episodes 0", "--floor-episodes must be >= 1"),
    ("--learning-starts -1", "--learning-starts must be >= 0"),
    ("--exploration-steps -1", "--exploration-steps must be >= 0"),
    ("--workers 0", "--workers must be >= 1"),
    ("--bootstrap-resamples 0", "--bootstrap-resamples must be >= 1"),
    ("--ray-address 127.0.0.1:6379", "--ray-address needs --backend ray"),
    ("--env Nope-v0", "Unknown environment id 'Nope-v0'"),
    ("--env CarRacing-v3", "Observation space must be a 1-D Box"),
    ("--task cifar", "--task cifar needs --data-dir"),
    ("--task cifar --data-dir {root}/missing", "is not a folder"),
    (f"{CC} --env CartPole-v1", "--env is for --task rl"),
    (f"{CC} --model alexnet", "--model must be one of"),
    (f"{CC} --width 0", "--width must be a finite number > 0"),
    (f"{CC} --epochs 0", "--epochs must be >= 1"),
    (f"{CC} --patience 0", "--patience must be >= 1"),
    (f"{CC} --batch-size 0", "--batch-size must be >= 1"),
    (f"{CC} --valid-size 100000", "--valid-size must lie in 1..99"),
    (f"{CC} --seeds 2 --methods sgd --sgd-grid 0", "rates must be finite numbers > 0"),
    ("--task cifar --data-dir {root}/cifar-evil", "global posix.system is not allowed"),
    (f"{CP} --model vgg19", "--model is for --task cifar"),
    (f"{CP} --bptt 0", "--bptt must be >= 1"),
    (f"{CP} --batch-size 10000", "too few for 10000 streams"),
    ("--task ptb --data-dir {root}", "PTB file not found"),
    ("--algo sac --methods sgd", "unknown method 'sgd'"),
    ("--algo td3 --methods alrao,adaqn", "unknown method 'adaqn'"),
    ("--algo sac --env CartPole-v1", "needs a Box"),
    ("--algo sac --env Nope-v0", "Nope-v0"),
    ("--algo sac --exploration-steps 5", "--exploration-steps is DQN's"),
    ("--algo sac --eta-min 1 --eta-max 0.1", "--eta-min"),
    ("--algo sac --total-steps 0", "--total-steps must be >= 1"),
    ("--algo td3 --sgd-grid 0", "rates must be finite numbers > 0"),
    (f"{CC} --algo sac", "--algo sac is for --task rl"),
]
if importlib.util.find_spec("ray") is None:
    COMPARE.append(("--backend ray", "needs the package 'ray'"))

KNOWN_BUGS: list[Any] = [
    Row("compare", "--seed 1", "unrecognized arguments: --seed").param(),
    Row("compare", "--task rl --model vgg19", "--model is for --task cifar").param(),
    Row("compare", "--epochs 5", "--epochs is for --task cifar").param(),
]


def _rows() -> list[Any]:
    rows = [Row("run_dqn", a, m).param() for a, m in DQN]
    rows += [Row("run_cifar", a, m).param() for a, m in CIFAR]
    rows += [Row("run_ptb", a, m).param() for a, m in PTB]
    rows += [Row("compare", a, m).param() for a, m in COMPARE]
    required = {"run_dqn": "", "run_cifar": D, "run_ptb": P, "compare": ""}
    for name, base in required.items():
        for logdir, message in LOGDIR_ROWS:
            if name == "compare" and logdir == "{held}":
                continue  # compare.py reuses the finished runs of its --out by design
            rows.append(Row(name, f"{base} {OUT_FLAG[name]} {logdir}".strip(), message).param())
    return rows + KNOWN_BUGS


def _type_rows() -> list[Any]:
    """For every flag of every parser: the wrong type of value, and the message argparse must give."""
    rows: list[Any] = []
    for name in NAMES:
        if MISSING_SCRIPT[name]:
            rows.append(Row(name, "--help", "").param())  # skipped with the reason
            continue
        parser = importlib.import_module(f"alrao_cli.{name}").build_parser()
        for action in parser._actions:
            if not action.option_strings or isinstance(action, argparse._HelpAction):
                continue
            flag = action.option_strings[-1]
            if isinstance(action, argparse._StoreTrueAction):
                rows.append(Row(name, f"{flag}=1", f"argument {flag}: ignored explicit argument '1'").param())
            elif action.choices is not None:
                rows.append(Row(name, f"{flag} bogus", f"argument {flag}: invalid choice: 'bogus'").param())
            elif isinstance(action.nargs, int) and action.nargs > 1:
                rows.append(Row(name, f"{flag} 1", f"argument {flag}: expected {action.nargs} arguments").param())
            elif getattr(action.type, "__name__", None) in ("int", "float"):
                kind = action.type.__name__  # type: ignore[union-attr]
                rows.append(Row(name, f"{flag} abc", f"argument {flag}: invalid {kind} value: 'abc'").param())
    return rows


def _prepare(tmp_path: Path, data: dict[str, Path]) -> tuple[dict[str, Path], Path]:
    """Placeholders for a row: the shared data, a file, a fresh output folder holding a file, a folder holding a run."""
    root = data["root"]
    afile = root / "afile"
    afile.write_text(KEEP)
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text(KEEP)
    held = tmp_path / "held"
    held.mkdir()
    (held / "summary.json").write_text("{}")
    return {"root": root, "held": held, "out": out}, out


def _snapshot(*folders: Path) -> dict[str, bytes]:
    return {str(p): p.read_bytes() for f in folders for p in sorted(f.rglob("*")) if p.is_file()}


def _run_refused(row: Row, tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> str:
    paths, out = _prepare(tmp_path, data)
    argv = _expand(row.argv, paths)
    if not any(a in argv for a in ("--logdir", "--out")):
        argv += [OUT_FLAG[row.script], str(out)]
    before = _snapshot(tmp_path)
    afile = data["root"] / "afile"
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        _main(row.script)(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert row.message.format_map(paths) in err, err
    assert _snapshot(tmp_path) == before, "a refused command wrote or changed a file"
    assert afile.read_text() == KEEP
    assert not data["marker"].exists(), "a hostile data file ran code"
    return err


@pytest.mark.parametrize("row", _rows())
@pytest.mark.usefixtures("no_training")
def test_bad_input_exits_2_with_one_line_and_writes_nothing(
    row: Row, tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _run_refused(row, tmp_path, data, capsys)


@pytest.mark.parametrize("row", _type_rows())
@pytest.mark.usefixtures("no_training")
def test_a_value_of_the_wrong_type_for_any_flag_exits_2_with_one_line(
    row: Row, tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _run_refused(row, tmp_path, data, capsys)


# --- bad values only found once training starts (run for real, tiny) ----------------------------------------

TINY = {
    "run_dqn": "--env CartPole-v1 --total-steps 50 --learning-starts 10 --eval-every 50 --eval-episodes 1 "
    "--no-progress",
    "run_cifar": f"{D} --width 0.0625 --limit-train 16 --batch-size 8 --epochs 1 --no-progress",
    "run_ptb": f"{P} --batch-size 2 --bptt 30 --epochs 1 --no-progress",
}
LATE: list[Any] = [
    Row("run_dqn", "--seed -1", "seed").param(),
    Row("run_cifar", "--seed -1", "seed").param(),
    Row("run_ptb", "--seed -1", "seed").param(),
    Row("run_dqn", "--eta-min 1e-320", "eta").param(),
    Row("run_dqn", "--eta-max 1e39", "eta").param(),
    Row("run_cifar", "--eta-max 1e308", "eta").param(),
]


@pytest.mark.parametrize("row", LATE)
def test_bad_values_that_only_training_would_meet_are_refused_before_anything_is_written(
    row: Row, tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    _run_refused(Row(row.script, f"{TINY[row.script]} {row.argv}", row.message), tmp_path, data, capsys)


# --- at process level -----------------------------------------------------------------------------------------

PROCESS_ROWS: list[Any] = [
    Row("run_dqn", "--env Nope-v0", "Unknown environment id").param(),
    Row("run_dqn", "--env CartPole-v1 --buffer-size 100000000000", "bytes of memory are available").param(),
    Row("run_cifar", "--data-dir {root}/cifar-evil", "global posix.system is not allowed").param(),
    Row(
        "run_ptb",
        "--train-file {root}/ptb/ptb.train.txt --valid-file {root}/garbage.txt --test-file {root}/ptb/ptb.test.txt",
        "--valid-file {root}/garbage.txt: not UTF-8 text",
    ).param(),
    Row(  # load_ptb warns about the unknown symbols first: the error line must still be alone
        "run_ptb",
        "--train-file {root}/ptb/ptb.train.txt --valid-file {root}/unknown.txt --test-file {root}/ptb/ptb.test.txt "
        "--batch-size 500",
        "too few for 500 streams",
    ).param(),
    Row("compare", "--sgd-grid nan", "rates must be finite numbers > 0").param(),
    Row("compare", "--task ptb --data-dir {root}/ptb --batch-size 10000", "too few for 10000 streams").param(),
    Row(  # a warning about unknown symbols comes first: the error line must still be alone
        "compare", "--task ptb --data-dir {root}/ptb-unknown --batch-size 10000", "too few for 10000 streams"
    ).param(),
]


@pytest.mark.parametrize("row", PROCESS_ROWS)
def test_bad_input_in_a_real_process_exits_2_with_one_line_and_no_traceback(
    row: Row, tmp_path: Path, data: dict[str, Path]
) -> None:
    paths, out = _prepare(tmp_path, data)
    before = _snapshot(tmp_path)
    argv = [*_expand(row.argv, paths), OUT_FLAG[row.script], str(out)]
    proc = subprocess.run(
        [sys.executable, str(SCRIPTS / f"{row.script}.py"), *argv],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
    )
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert row.message.format_map(paths) in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"{row.script}.py: error: "), proc.stderr
    assert proc.stdout == ""
    assert _snapshot(tmp_path) == before
    assert not data["marker"].exists()


# --- an output folder that cannot be written ------------------------------------------------------------------


def _read_only(folder: Path, command: list[str]) -> list[str]:
    """``command`` run where ``folder`` cannot be written: permissions for a normal user; for root (whom
    permissions do not stop) a read-only bind mount in a private mount namespace."""
    if os.geteuid() != 0:
        folder.chmod(0o555)
        return command
    probe = ["unshare", "-m", "sh", "-c", f"mount --bind {shlex.quote(str(folder))} {shlex.quote(str(folder))} && "
             f"mount -o remount,bind,ro {shlex.quote(str(folder))} && exec \"$@\"", "sh"]
    try:
        ok = subprocess.run([*probe, "true"], capture_output=True, timeout=30).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        ok = False
    if not ok:
        pytest.skip("running as root without mount namespaces: no way to make a folder read-only")
    return [*probe, *command]


@pytest.mark.parametrize("script", ["run_dqn", "run_cifar", "run_ptb"])
def test_a_read_only_logdir_exits_2_with_one_line_naming_the_path(
    script: str, tmp_path: Path, data: dict[str, Path]
) -> None:
    logdir = tmp_path / "readonly"
    logdir.mkdir()
    base = {"run_dqn": TINY["run_dqn"], "run_cifar": TINY["run_cifar"], "run_ptb": TINY["run_ptb"]}[script]
    argv = [*_expand(base, {"root": data["root"]}), "--logdir", str(logdir)]
    command = _read_only(logdir, [sys.executable, str(SCRIPTS / f"{script}.py"), *argv])
    try:
        proc = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    finally:
        logdir.chmod(0o755)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith(f"{script}.py: error: --logdir {str(logdir)!r} is not writable"), proc.stderr
    assert "b'" not in proc.stderr
    assert list(logdir.iterdir()) == []


# --- help texts and messages -----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", [n for n in NAMES if not MISSING_SCRIPT[n]])
def test_no_help_line_shows_a_default_of_none(name: str) -> None:
    """A field's doc says what None means (e.g. '--lr ... (default 1e-3) ...'); '(default: None)' after it
    contradicted it."""
    text = " ".join(importlib.import_module(f"alrao_cli.{name}").build_parser().format_help().split())
    assert "(default: None)" not in text


@pytest.mark.parametrize(
    ("name", "argv", "dest"),
    [
        ("run_dqn", ["--max-weight", "none"], "max_weight"),
        ("run_cifar", ["--data-dir", "d", "--max-weight", "none"], "max_weight"),
        ("run_cifar", ["--data-dir", "d", "--valid-size", "none"], "valid_size"),
        ("run_ptb", ["--max-weight", "none"], "max_weight"),
    ],
)
def test_a_flag_whose_help_documents_none_takes_none(name: str, argv: list[str], dest: str) -> None:
    parser = importlib.import_module(f"alrao_cli.{name}").build_parser()
    action = next(a for a in parser._actions if a.dest == dest)
    assert "None" in (action.help or "")
    assert getattr(parser.parse_args(argv), dest) is None


@pytest.mark.usefixtures("no_training")
def test_warnings_of_an_accepted_input_are_one_line_each_before_the_run(
    tmp_path: Path, data: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    root = data["root"]
    argv = ["--train-file", f"{root}/ptb/ptb.train.txt", "--valid-file", f"{root}/unknown.txt", "--test-file",
            f"{root}/ptb/ptb.test.txt", "--batch-size", "2", "--logdir", str(tmp_path / "run")]
    capsys.readouterr()
    with pytest.raises(_AcceptedError):
        _main("run_ptb")(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and ": warning: " in lines[0] and "absent from training" in lines[0], lines
