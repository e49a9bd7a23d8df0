"""The commands: console entry points installed by ``pip install -e .`` and the thin ``scripts/`` files.

Both run the same ``alrao_cli.<module>.main``; the scripts no longer edit ``sys.path`` (they import the
installed package).
"""

from __future__ import annotations

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = {
    "alrao-dqn": "alrao_cli.run_dqn:main",
    "alrao-evaluate": "alrao_cli.evaluate:main",
    "alrao-cifar": "alrao_cli.run_cifar:main",
    "alrao-ptb": "alrao_cli.run_ptb:main",
    "alrao-compare": "alrao_cli.compare:main",
}
SCRIPTS = {"alrao-dqn": "run_dqn.py", "alrao-evaluate": "evaluate.py", "alrao-cifar": "run_cifar.py",
           "alrao-ptb": "run_ptb.py", "alrao-compare": "compare.py"}


def _installed() -> dict[str, str]:
    eps = importlib.metadata.distribution("alrao-rl").entry_points
    return {ep.name: ep.value for ep in eps if ep.group == "console_scripts"}


def test_the_package_declares_one_console_entry_point_per_command() -> None:
    assert _installed() == COMMANDS


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_entry_point_loads_a_main_function(name: str) -> None:
    (ep,) = [e for e in importlib.metadata.entry_points(group="console_scripts") if e.name == name]
    assert callable(ep.load())


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_installed_command_prints_its_help_under_its_own_name(name: str, tmp_path: Path) -> None:
    command = Path(sys.executable).parent / name
    assert command.exists(), f"{command} is not installed (pip install -e .)"
    proc = subprocess.run([str(command), "--help"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {name} "), proc.stdout[:200]
    assert list(tmp_path.iterdir()) == []  # --help writes nothing


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_the_script_runs_from_the_repository_root_as_the_readme_says(name: str) -> None:
    script = f"scripts/{SCRIPTS[name]}"
    proc = subprocess.run([sys.executable, script, "--help"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith(f"usage: {SCRIPTS[name]} "), proc.stdout[:200]


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "scripts").glob("*.py")))
def test_no_script_edits_sys_path(script: str) -> None:
    assert "sys.path" not in (ROOT / "scripts" / script).read_text()


def test_an_error_names_the_command_it_was_called_by(tmp_path: Path) -> None:
    command = Path(sys.executable).parent / "alrao-dqn"
    proc = subprocess.run([str(command), "--heads", "0", "--logdir", str(tmp_path / "run")], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.startswith("alrao-dqn: error: ") and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not (tmp_path / "run").exists()
