"""Shared plumbing for the commands: argparse from a config dataclass, one-line errors, exit status 2."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import os
import re
import sys
import tempfile
import textwrap
import types
import typing
import warnings
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

__all__ = [
    "HeldWarnings",
    "OneLineParser",
    "add_config_arguments",
    "add_method_arguments",
    "as_flags",
    "check_logdir",
    "config_from_args",
    "describe_os_error",
    "fail",
    "field_docs",
    "flag_fields",
    "make_logdir",
    "program",
    "stopped_status",
]


def program() -> str:
    """The name the program was called by (``run_dqn.py``, ``alrao-dqn``): what argparse shows too."""
    return os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "alrao"


def fail(message: str) -> NoReturn:
    """Print ``prog: error: message`` on one line to stderr and exit with status 2."""
    print(f"{program()}: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage dump), exit status 2, and which
    takes no abbreviated flags (``--seed`` must not silently mean ``--seeds``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        fail(f"{message} (see --help)")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (as CleanRL/tyro configs do)."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs = {}
    for node, nxt in itertools.pairwise(body):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _or_none(kind: Callable[[str], Any]) -> Callable[[str], Any]:
    """``kind``, except that ``none`` (any case) gives None: the value a field's doc calls None."""

    def parse(text: str) -> Any:
        return None if text.strip().lower() == "none" else kind(text)

    parse.__name__ = getattr(kind, "__name__", "value")  # argparse's message: "invalid float value: 'x'"
    return parse


def _parser_type(annotation: Any) -> tuple[Callable[[str], Any], int | str | None]:
    """argparse ``type`` and ``nargs`` for a field annotation (int, float, str, X | None, tuple[X, X],
    tuple[X, ...]: one or more values)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _or_none(_parser_type(args[0])[0]), None
    if origin is tuple:
        args = typing.get_args(annotation)
        if len(args) == 2 and args[1] is Ellipsis:
            return args[0], "+"
        return args[0], len(args)
    return annotation, None


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: Iterable[str] = ()) -> None:
    """Add a ``--kebab-case`` option for every field of the dataclass ``cls`` (help from its docs).

    A field that may be None takes the value ``none``; its help shows no ``(default: None)``, since
    its doc says what None stands for."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, nargs = _parser_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        if isinstance(nargs, int):
            metavar: str | tuple[str, ...] = tuple(f"W{i + 1}" for i in range(nargs))
        else:
            metavar = f.name.upper()
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            nargs=nargs,
            default=default,
            metavar=metavar,
            help=docs.get(f.name, "") + ("" if default is None else f" (default: {shown})"),
        )


def as_flags(message: str, names: Iterable[str]) -> str:
    """``message`` with each config field in ``names`` written as its command-line flag (``bptt`` ->
    ``--bptt``, ``eta_min`` -> ``--eta-min``): the library names fields, a command names its flags.

    Only whole words are replaced, not quoted values (``'bptt'``) nor parts of flags or paths.
    """
    names = sorted(set(names), key=len, reverse=True)
    if not names:
        return message
    pattern = re.compile(r"(?<![\w'\"./-])(" + "|".join(map(re.escape, names)) + r")(?![\w'\"/-])")
    return pattern.sub(lambda m: "--" + m.group(1).replace("_", "-"), message)


def flag_fields(args: argparse.Namespace, *classes: type) -> list[str]:
    """The fields of the dataclasses ``classes`` that are options of this command (attributes of the
    parsed ``args``, each given as ``--field-name``): the names :func:`as_flags` rewrites."""
    return [f.name for cls in classes for f in dataclasses.fields(cls) if hasattr(args, f.name)]


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Build ``cls`` from parsed options; its own validation errors become one-line exits that name
    the flags (``--bptt``), not the fields (``bptt``)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        fail(as_flags(str(e), flag_fields(args, cls)))


class HeldWarnings:
    """Hold the warnings raised while a command checks its input, so that a refused input prints its
    one error line alone; :meth:`release` (or leaving the ``with`` block other than by an error exit)
    prints them, one line each (``prog: warning: message``), and lets later warnings through.

    >>> with HeldWarnings() as held:  # doctest: +SKIP
    ...     data = load(args)          # may warn, then fail(...) drops the warnings
    ...     held.release()             # input accepted: the warnings, then the run
    ...     train(data)
    """

    def __init__(self) -> None:
        self.held: list[str] = []
        self._saved: Callable[..., Any] | None = None

    def __enter__(self) -> HeldWarnings:
        self._saved = warnings.showwarning
        warnings.showwarning = self._hold
        return self

    def _hold(self, message: Warning | str, category: type[Warning], *_args: Any, **_kwargs: Any) -> None:
        self.held.append(f"{category.__name__}: {' '.join(str(message).split())}")

    def _restore(self) -> None:
        if self._saved is not None and warnings.showwarning == self._hold:
            warnings.showwarning = self._saved
        self._saved = None

    def release(self) -> None:
        """Print the held warnings (one line each) and stop holding."""
        self._restore()
        for line in self.held:
            print(f"{program()}: warning: {line}", file=sys.stderr)
        self.held = []

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None, _tb: Any) -> None:
        if exc_type is SystemExit and getattr(exc, "code", 0) not in (0, None):
            self.held = []  # refused: the error line is the whole story
        self.release()


def add_method_arguments(parser: argparse.ArgumentParser, default_logdir: str,
                         methods: Iterable[str] | None = None) -> None:
    """``--alrao | --optimizer {sgd,adam} [| --method {methods}]``, ``--logdir``, ``--resume``, ``--no-progress``.

    :param methods: the command's methods, for ``--method`` (None: no ``--method``).
    """
    method = parser.add_mutually_exclusive_group()
    method.add_argument("--alrao", action="store_true", help="train with Alrao (the default method; --alrao-optimizer)")
    method.add_argument("--optimizer", choices=["sgd", "adam"], help="train with torch SGD (needs --lr) or Adam")
    if methods is not None:
        method.add_argument("--method", choices=list(methods),
                            help="the method by name: --method alrao is --alrao, --method adam is --optimizer adam")
    parser.add_argument("--logdir", default=None, help=f"output folder (default: {default_logdir})")
    parser.add_argument("--resume", action="store_true", help="continue the run saved in --logdir")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def check_logdir(logdir: str, resume: bool) -> None:
    """Refuse a ``--logdir`` that cannot take this run, before anything is written: a file, a
    folder that already holds a run (unless resuming), a resume without a checkpoint, or a folder
    this process cannot write to."""
    if os.path.exists(logdir) and not os.path.isdir(logdir):
        fail(f"--logdir {logdir!r} is a file, not a folder")
    existing = [f for f in ("checkpoint.pt", "summary.json") if os.path.exists(os.path.join(logdir, f))]
    if existing and not resume:
        fail(f"--logdir {logdir!r} already holds a run ({', '.join(existing)}); use --resume or another --logdir")
    if resume and not os.path.exists(os.path.join(logdir, "checkpoint.pt")):
        fail(f"--resume: no checkpoint.pt in {logdir!r}")
    if os.path.isdir(logdir):
        _check_writable(logdir)


def make_logdir(logdir: str) -> None:
    """Create ``logdir`` (and its parents) and check that files can be written in it, or exit 2 naming
    the problem."""
    try:
        os.makedirs(logdir, exist_ok=True)
    except OSError as e:
        fail(f"--logdir {logdir!r}: {e.strerror}")
    _check_writable(logdir)


def _check_writable(folder: str) -> None:
    """Exit 2 unless a file can be created in ``folder`` (permissions, a read-only file system): found by
    trying, since ``os.access`` says yes to root and knows nothing of read-only mounts. The probe is an
    anonymous temporary file: nothing is left behind."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        fail(f"--logdir {folder!r} is not writable: {e.strerror}")


def stopped_status(default: int = 1) -> int:
    """Exit status of a run stopped early by a signal: ``128 + signal`` (130 for Ctrl-C, 143 for
    SIGTERM), as a shell reports a process that signal killed; ``default`` if no signal is on record."""
    from alrao_rl.checkpoint import last_stop_signal

    signum = last_stop_signal()
    return 128 + int(signum) if signum is not None else default


def describe_os_error(e: OSError) -> str:
    """``strerror: path`` for an ``OSError`` (the path decoded if it came as bytes), else its text."""
    if e.filename is None:
        return str(e)
    return f"{e.strerror or e}: {os.fsdecode(e.filename)}"
