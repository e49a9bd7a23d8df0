"""The README stays true to the repository: the scripts and commands it names exist, and its recipes do not
depend on files outside a checkout of this repository."""

from __future__ import annotations

import importlib
import importlib.metadata
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def test_no_recipe_depends_on_a_folder_beside_the_checkout() -> None:
    """Before, the PTB recipe read ../shared/data/ptb, which only exists beside this repository's checkout."""
    assert "../shared" not in README and "/work/shared" not in README


@pytest.mark.parametrize("module", ["run_dqn", "run_cifar", "run_ptb", "compare", "evaluate"])
def test_no_help_text_depends_on_a_folder_beside_the_checkout(module: str) -> None:
    text = importlib.import_module(f"alrao_cli.{module}").build_parser().format_help()
    assert "/shared" not in text


def test_every_script_the_readme_runs_exists() -> None:
    scripts = set(re.findall(r"python (scripts/\w+\.py)", README))
    assert scripts and all((ROOT / s).is_file() for s in scripts), scripts


def test_every_command_the_readme_names_is_installed() -> None:
    named = set(re.findall(r"`(alrao-[a-z]+)", README))
    eps = importlib.metadata.distribution("alrao-rl").entry_points
    installed = {ep.name for ep in eps if ep.group == "console_scripts"}
    assert named and named <= installed, named - installed
