"""Atomic, safe checkpoint files.

:func:`save_checkpoint` writes a dict with ``torch.save`` to a temporary file in the target's
directory, ``fsync``-s it, atomically renames it over the target and ``fsync``-s the directory: a
crash or a full disk at any point leaves either the previous checkpoint or the new one, never a
half-written file.

:func:`load_checkpoint` reads with ``torch.load(weights_only=True)``, which only rebuilds tensors
and plain containers and never runs code from the file, and refuses anything that is not a
checkpoint written by :func:`save_checkpoint` (it carries a format marker under ``"__meta__"``).

A checkpoint may therefore only contain what ``weights_only`` loading accepts: tensors, Python
``int`` / ``float`` / ``bool`` / ``complex`` / ``str`` / ``bytes`` / ``None``, ``torch.Size`` /
``dtype`` / ``device``, and dicts, lists, tuples and sets of those (module and optimizer
``state_dict()``-s qualify; numpy arrays do not: convert them with ``torch.from_numpy``).
:func:`save_checkpoint` checks this before writing anything.

>>> save_checkpoint(tmp / "ckpt.pt", {"model": net.state_dict(), "step": 1000})  # doctest: +SKIP
>>> load_checkpoint(tmp / "ckpt.pt")["step"]  # doctest: +SKIP
1000
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import signal
import tempfile
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping
from typing import Any

import torch

__all__ = [
    "FORMAT",
    "META_KEY",
    "VERSION",
    "CheckpointError",
    "check_compatible",
    "last_stop_signal",
    "load_checkpoint",
    "save_checkpoint",
    "stop_requests",
    "write_text_atomic",
]

logger = logging.getLogger(__name__)

META_KEY = "__meta__"
"""Reserved top-level key holding the format marker."""
FORMAT = "alrao-rl-checkpoint"
"""Value of ``state["__meta__"]["format"]`` in every checkpoint written by :func:`save_checkpoint`."""
VERSION = 1
"""Current checkpoint format version; files with a newer version are refused."""

_SCALARS = (int, float, bool, complex, str, bytes, type(None), torch.Size, torch.dtype, torch.device)
_CONTAINERS = (dict, OrderedDict, list, tuple, set)


class CheckpointError(ValueError):
    """A file is not a valid alrao-rl checkpoint, or a checkpoint does not fit the current run."""


def _check_serializable(value: Any, where: str) -> None:
    """Raise TypeError naming the first value ``torch.load(weights_only=True)`` would refuse."""
    if isinstance(value, torch.Tensor):
        return
    if isinstance(value, _SCALARS) and type(value).__module__ in ("builtins", "torch"):
        return
    if type(value) in _CONTAINERS:
        if isinstance(value, dict):
            for k, v in value.items():
                _check_serializable(k, f"{where} key {k!r}")
                _check_serializable(v, f"{where}[{k!r}]")
        else:
            for i, v in enumerate(value):
                _check_serializable(v, f"{where}[{i}]")
        return
    hint = " (convert numpy arrays with torch.from_numpy)" if type(value).__module__ == "numpy" else ""
    raise TypeError(
        f"{where} is a {type(value).__module__}.{type(value).__qualname__}, which a weights-only "
        f"checkpoint cannot hold{hint}"
    )


def _fsync_dir(directory: str) -> None:
    """Make a rename in ``directory`` durable (no-op where directories cannot be opened)."""
    if os.name != "posix":
        return
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _new_file_mode(path: str) -> int:
    """Permission bits for the checkpoint: those of the file it replaces, else ``0o666 & ~umask``."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        pass
    umask = 0o022
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                umask = int(line.split()[1], 8)
                break
    return 0o666 & ~umask


def save_checkpoint(path: str | os.PathLike[str], state: dict[str, Any]) -> None:
    """Atomically write ``state`` (plus the format marker) to ``path``.

    The data goes to a temporary file in the same directory, which is flushed and ``fsync``-ed,
    then ``os.replace``-d onto ``path``; finally the directory is ``fsync``-ed. If anything fails
    (e.g. ``OSError(ENOSPC)``), the temporary file is removed, the exception propagates and any
    previous checkpoint at ``path`` is left intact.

    :param path: target file; its directory must exist.
    :param state: a dict of tensors and plain Python values (see the module docstring); the key
        ``"__meta__"`` is reserved.
    :raises TypeError: if ``state`` holds a value weights-only loading would refuse.
    :raises ValueError: if ``state`` uses the reserved ``"__meta__"`` key.
    """
    if not isinstance(state, dict):
        raise TypeError(f"state must be a dict, got {type(state).__name__}")
    if META_KEY in state:
        raise ValueError(f"state must not contain the reserved key {META_KEY!r}")
    _check_serializable(state, "state")
    payload = {**state, META_KEY: {"format": FORMAT, "version": VERSION}}

    path = os.path.abspath(os.fspath(path))
    directory, name = os.path.split(path)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(path))
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(directory)


def load_checkpoint(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a checkpoint written by :func:`save_checkpoint`, without unpickling arbitrary code.

    Tensors are mapped to the CPU. The format marker is checked and removed from the result.

    :param path: the checkpoint file.
    :raises FileNotFoundError: if ``path`` does not exist.
    :raises CheckpointError: if the file is truncated, corrupted, not a weights-only torch file
        (e.g. a pickle that would run code), or not an alrao-rl checkpoint; the original error is
        chained.
    """
    path = os.fspath(path)
    _check_zip_integrity(path)
    try:
        with warnings.catch_warnings():
            # Raised for foreign pickles (protocol != 2) just before they are refused anyway.
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, "checkpoint file not found", path) from None
    except (IsADirectoryError, PermissionError):
        raise
    except Exception as e:  # torch raises RuntimeError, UnpicklingError, EOFError, ... on bad files
        raise CheckpointError(
            f"{path!r} is not a valid checkpoint (truncated, corrupted, or not a weights-only torch "
            f"file): {type(e).__name__}: {_summary(e)}"
        ) from e
    meta = obj.get(META_KEY) if isinstance(obj, dict) else None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not an alrao-rl checkpoint (no {FORMAT!r} marker)")
    version = meta.get("version")
    if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
        raise CheckpointError(
            f"{path!r} has checkpoint format version {version!r}; this code reads versions 1 to {VERSION}"
        )
    return {k: v for k, v in obj.items() if k != META_KEY}


def _check_zip_integrity(path: str) -> None:
    """``torch.load`` does not check the archive's CRC-32s: a flipped byte in a tensor would load.

    Files that are not zip archives are left to ``torch.load`` (which refuses them).
    """
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, OSError, EOFError, ValueError):
        return
    if bad is not None:
        raise CheckpointError(f"{path!r} is corrupted: the record {bad!r} fails its CRC check")


def _summary(e: BaseException) -> str:
    """The informative line of a (possibly long, multi-paragraph) torch.load error message."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.startswith("Check the documentation")] or [""]
    return lines[-1][:300]


def check_compatible(
    saved_config: Mapping[str, Any], current_config: Mapping[str, Any], keys: Iterable[str]
) -> None:
    """Refuse to resume when configuration values that must match differ.

    :param saved_config: the configuration stored in the checkpoint.
    :param current_config: the configuration of the current run.
    :param keys: the keys that must be equal; a key absent from one side counts as a difference.
    :raises CheckpointError: listing every differing key as ``key: saved=X current=Y``.
    """
    missing = "<missing>"
    diffs = []
    for key in dict.fromkeys(keys):  # dedupe, keep order
        saved = saved_config.get(key, missing)
        current = current_config.get(key, missing)
        if saved is missing or current is missing or not _equal(saved, current):
            shown = [v if v is missing else repr(v) for v in (saved, current)]
            diffs.append(f"{key}: saved={shown[0]} current={shown[1]}")
    if diffs:
        listing = "\n  ".join(diffs)
        raise CheckpointError(f"checkpoint is incompatible with the current configuration:\n  {listing}")


def _equal(a: Any, b: Any) -> bool:
    """``a == b``, also for tensors (same shape and values) and without raising on odd types."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        return isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and torch.equal(a, b)
    try:
        return bool(a == b)
    except Exception:
        return False


def write_text_atomic(path: str | os.PathLike[str], text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, ``fsync`` and a rename (never half-written)."""
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(os.path.join(directory, name)))
        os.replace(tmp, os.path.join(directory, name))
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


_stop_signal: list[int | None] = [None]  # the signal of the latest stop_requests block (signals are process-wide)


def last_stop_signal() -> int | None:
    """The signal (``signal.SIGINT``, ``signal.SIGTERM``) that asked the most recent
    :func:`stop_requests` block to stop, or None if no signal came. A command-line program exits with
    ``128 + signal`` after a stopped run, as a shell reports a process killed by that signal, so that
    scripts can tell it from a finished run."""
    return _stop_signal[0]


@contextlib.contextmanager
def stop_requests(what: str) -> Iterator[dict[str, bool]]:
    """While open, SIGINT/SIGTERM ask a training loop to stop at the end of ``what`` (an episode, an
    epoch) by setting ``request["stop"]``; a second signal raises ``KeyboardInterrupt`` at once. The
    first signal's number is kept for :func:`last_stop_signal`.

    :param what: the unit the loop finishes before stopping, for the log message.
    """
    request = {"stop": False}
    previous = {}
    _stop_signal[0] = None

    def handler(signum: int, _frame: Any) -> None:
        if request["stop"]:
            raise KeyboardInterrupt
        request["stop"] = True
        _stop_signal[0] = signum
        logger.warning("signal %d: stopping at the end of the current %s (again to stop now)", signum, what)

    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(ValueError):  # not the main thread: no signal handling
            previous[sig] = signal.signal(sig, handler)
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)
