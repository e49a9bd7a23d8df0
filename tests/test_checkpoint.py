"""Tests for alrao_rl.checkpoint: atomic writes, weights-only loading, format marker, config checks."""

from __future__ import annotations

import errno
import os
import pickle
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from agents.replay_buffer import ReplayBuffer
from alrao_rl import checkpoint as ckpt_mod
from alrao_rl.checkpoint import (
    FORMAT,
    META_KEY,
    CheckpointError,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
)


def _assert_nested_equal(a: Any, b: Any) -> None:
    assert type(a) is type(b), (type(a), type(b))
    if isinstance(a, torch.Tensor):
        assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b)
    elif isinstance(a, dict):
        assert a.keys() == b.keys()
        for k in a:
            _assert_nested_equal(a[k], b[k])
    elif isinstance(a, list | tuple):
        assert len(a) == len(b)
        for x, y in zip(a, b, strict=True):
            _assert_nested_equal(x, y)
    else:
        assert a == b


class _Evil:
    """Unpickling this runs a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Callable[..., Any], tuple[str]]:
        return (os.system, (f"touch {shlex.quote(str(self.marker))}",))


def _sample_state() -> dict[str, Any]:
    net = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    net(torch.ones(4, 3)).sum().backward()
    opt.step()
    return {
        "model": net.state_dict(),
        "optimizer": opt.state_dict(),
        "nested": {"a": [1, 2.5, "x", None, True], "b": (torch.arange(3), {"deep": torch.zeros(2, 2)})},
        "step": 12345,
        "lr": 3e-4,
        "name": "dqn-alrao",
        "big": 2**127 + 5,  # like the 128-bit PCG64 state
        "int_keys": {0: "a", 7: "b"},
    }


def test_roundtrip_nested_state(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    state = _sample_state()
    save_checkpoint(path, state)
    loaded = load_checkpoint(path)
    assert META_KEY not in loaded
    _assert_nested_equal(state, loaded)
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_roundtrip_str_path_and_overwrite(tmp_path: Path) -> None:
    path = str(tmp_path / "ckpt.pt")
    save_checkpoint(path, {"step": 1})
    save_checkpoint(path, {"step": 2})
    assert load_checkpoint(path) == {"step": 2}
    assert os.listdir(tmp_path) == ["ckpt.pt"]


def test_new_checkpoint_gets_umask_permissions(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"step": 1})
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    path.chmod(0o600)
    save_checkpoint(path, {"step": 2})  # an existing file keeps its mode
    assert path.stat().st_mode & 0o777 == 0o600


def test_roundtrip_replay_buffer_resumes_identically(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    buf = ReplayBuffer((4,), capacity=50, seed=11)
    for _ in range(3):  # 90 transitions: wraps around
        buf.add_batch(
            rng.standard_normal((30, 4)),
            rng.integers(0, 4, 30),
            rng.standard_normal(30),
            rng.standard_normal((30, 4)),
            rng.random(30) < 0.1,
        )
    buf.sample(8)
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"buffer": buf.state_dict(), "step": 90})
    loaded = load_checkpoint(path)
    assert loaded["step"] == 90
    resumed = ReplayBuffer((4,), capacity=50, seed=0)
    resumed.load_state_dict(loaded["buffer"])
    for _ in range(5):
        a, b = buf.sample(16), resumed.sample(16)
        for x, y in zip(a, b, strict=True):
            np.testing.assert_array_equal(x, y)


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(FileNotFoundError, match=r"nope\.pt"):
        load_checkpoint(path)


def test_truncated_file_refused(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint(path, {"w": torch.randn(100, 100)})
    data = path.read_bytes()
    for cut in (0, 10, len(data) // 2, len(data) - 1):
        path.write_bytes(data[:cut])
        with pytest.raises(CheckpointError, match=r"ckpt\.pt.*is not a valid checkpoint") as info:
            load_checkpoint(path)
        assert info.value.__cause__ is not None
    assert issubclass(CheckpointError, ValueError)


def test_random_bytes_refused(tmp_path: Path) -> None:
    path = tmp_path / "garbage.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match=r"garbage\.pt.*is not a valid checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("writer", ["pickle", "torch.save"])
def test_malicious_pickle_refused_without_running_code(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    payload = {META_KEY: {"format": FORMAT, "version": 1}, "x": _Evil(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(payload))
    else:
        torch.save(payload, path)
    with pytest.raises(CheckpointError, match=r"evil\.pt.*is not a valid checkpoint") as info:
        load_checkpoint(path)
    assert info.value.__cause__ is not None
    assert not marker.exists()
    # Positive control: the payload really is live when unpickled unsafely.
    control = tmp_path / "control"
    pickle.loads(pickle.dumps(_Evil(control)))
    assert control.exists()


@pytest.mark.parametrize(
    ("content", "match"),
    [
        ({"step": 1}, r"not an alrao-rl checkpoint"),
        ([1, 2, 3], r"not an alrao-rl checkpoint"),
        ({META_KEY: {"format": "something-else", "version": 1}}, r"not an alrao-rl checkpoint"),
        ({META_KEY: {"format": FORMAT, "version": 2}}, r"format version 2"),
        ({META_KEY: {"format": FORMAT}}, r"format version None"),
    ],
)
def test_foreign_torch_file_refused(tmp_path: Path, content: Any, match: str) -> None:
    path = tmp_path / "foreign.pt"
    torch.save(content, path)
    with pytest.raises(CheckpointError, match=match):
        load_checkpoint(path)


@pytest.mark.parametrize("fail_at", ["torch.save", "fsync", "replace"])
def test_failed_write_keeps_previous_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fail_at: str
) -> None:
    path = tmp_path / "ckpt.pt"
    old = {"step": 1, "w": torch.ones(3)}
    save_checkpoint(path, old)
    real_save = torch.save

    def full_disk(*_args: Any, **_kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    def save_then_fail(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        real_save(obj, f, *args, **kwargs)
        f.seek(0)
        f.truncate(50)  # some bytes made it to disk
        full_disk()

    if fail_at == "torch.save":
        monkeypatch.setattr(torch, "save", save_then_fail)
    elif fail_at == "fsync":
        monkeypatch.setattr(ckpt_mod.os, "fsync", full_disk)
    else:
        monkeypatch.setattr(ckpt_mod.os, "replace", full_disk)

    with pytest.raises(OSError) as info:
        save_checkpoint(path, {"step": 2, "w": torch.zeros(3)})
    assert info.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert os.listdir(tmp_path) == ["ckpt.pt"]  # no temp file left behind
    _assert_nested_equal(load_checkpoint(path), old)


def test_failed_first_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def boom(*_args: Any, **_kwargs: Any) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path / "ckpt.pt", {"step": 1})
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize(
    ("state", "exc", "match"),
    [
        (
            {"buf": {"obs": np.zeros(3)}},
            TypeError,
            r"state\['buf'\]\['obs'\] is a numpy.ndarray.*torch.from_numpy",
        ),
        ({"x": [1, np.float64(2.0)]}, TypeError, r"state\['x'\]\[1\] is a numpy.float64"),
        ({"f": lambda: 0}, TypeError, r"state\['f'\] is a builtins.function"),
        ({"s": frozenset({1})}, TypeError, r"frozenset"),
        ({META_KEY: {}}, ValueError, r"reserved key"),
    ],
)
def test_unsupported_state_refused_before_writing(
    tmp_path: Path, state: dict[str, Any], exc: type[Exception], match: str
) -> None:
    with pytest.raises(exc, match=match):
        save_checkpoint(tmp_path / "ckpt.pt", state)
    assert os.listdir(tmp_path) == []


def test_check_compatible_lists_every_difference() -> None:
    saved = {"env": "LunarLander-v3", "n_heads": 10, "eta_min": 1e-5, "eta_max": 10.0, "seed": 1}
    current = {"env": "CartPole-v1", "n_heads": 10, "eta_min": 1e-4, "seed": 2}
    with pytest.raises(CheckpointError) as info:
        check_compatible(saved, current, ["env", "n_heads", "eta_min", "eta_max", "env"])
    msg = str(info.value)
    assert "env: saved='LunarLander-v3' current='CartPole-v1'" in msg
    assert "eta_min: saved=1e-05 current=0.0001" in msg
    assert "eta_max: saved=10.0 current=<missing>" in msg
    assert "n_heads" not in msg and "seed" not in msg  # equal, or not among the checked keys
    assert msg.count("env:") == 1


def test_check_compatible_accepts_equal_configs() -> None:
    cfg = {"env": "LunarLander-v3", "hidden": (64, 64), "w": torch.ones(2)}
    check_compatible(cfg, dict(cfg, w=torch.ones(2)), ["env", "hidden", "w"])
    check_compatible({}, {}, [])
    with pytest.raises(CheckpointError, match=r"w: saved=tensor"):
        check_compatible(cfg, dict(cfg, w=torch.zeros(2)), ["w"])
