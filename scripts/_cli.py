"""Shared plumbing for the scripts: argparse from a config dataclass, one-line errors, exit status 2."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import itertools
import sys
import textwrap
import types
import typing
from collections.abc import Callable, Iterable
from typing import Any, NoReturn

__all__ = ["OneLineParser", "add_config_arguments", "config_from_args", "fail", "field_docs"]


def fail(message: str) -> NoReturn:
    """Print ``prog: error: message`` on one line to stderr and exit with status 2."""
    prog = argparse.ArgumentParser().prog
    print(f"{prog}: error: {' '.join(str(message).split())}", file=sys.stderr)
    raise SystemExit(2)


class OneLineParser(argparse.ArgumentParser):
    """An ``ArgumentParser`` whose errors are one line (no usage dump), exit status 2."""

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


def _parser_type(annotation: Any) -> tuple[Callable[[str], Any], int | None]:
    """argparse ``type`` and ``nargs`` for a field annotation (int, float, str, X | None, tuple)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return _parser_type(args[0])[0], None
    if origin is tuple:
        args = typing.get_args(annotation)
        return args[0], len(args)
    return annotation, None


def add_config_arguments(parser: argparse.ArgumentParser, cls: type, skip: Iterable[str] = ()) -> None:
    """Add a ``--kebab-case`` option for every field of the dataclass ``cls`` (help from its docs)."""
    docs = field_docs(cls)
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        kind, nargs = _parser_type(hints[f.name])
        default = f.default if f.default is not dataclasses.MISSING else None
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            type=kind,
            nargs=nargs,
            default=default,
            metavar=f.name.upper() if nargs is None else tuple(f"W{i + 1}" for i in range(nargs)),
            help=f"{docs.get(f.name, '')} (default: {default})",
        )


def config_from_args(cls: type, args: argparse.Namespace, **overrides: Any) -> Any:
    """Build ``cls`` from parsed options; its own validation errors become one-line exits."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    values.update(overrides)
    try:
        return cls(**values)
    except (TypeError, ValueError) as e:
        fail(str(e))
