"""scripts/setup on a newcomer's machine: only python3 on PATH, no virtualenv active. It
makes (or reuses) .venv and says so, lets pip show its progress, and ends with the next
command; scripts/lint and scripts/test then use the interpreter it installed into.
Run with INFERQ_SETUP_DRY_RUN=1: the commands are printed, nothing is installed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def clone(tmp_path: Path) -> Path:
    """A checkout's scripts, in a directory of its own (its .venv is the test's)."""
    (tmp_path / "repo" / "scripts").mkdir(parents=True)
    for name in ("setup", "python.sh"):
        shutil.copy2(ROOT / "scripts" / name, tmp_path / "repo" / "scripts" / name)
    return tmp_path / "repo"


def debian_path(tmp_path: Path) -> str:
    """A PATH with python3 and no `python`, as Debian has it."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python3").symlink_to(sys.executable)
    return f"{bin_dir}:/usr/bin:/bin"


def setup(clone: Path, *args: str, **env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PATH")}
    done = subprocess.run(
        ["bash", "scripts/setup", *args],
        cwd=clone,
        env={**base, "INFERQ_SETUP_DRY_RUN": "1", **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_with_no_venv_active_setup_makes_one_and_says_how_to_go_on(
    clone: Path, tmp_path: Path
) -> None:
    """Catches: `python: command not found` (exit 127) where only python3 exists, an install
    into the global interpreter without a word, 80 s of silence, no next step."""
    lines = setup(clone, PATH=debian_path(tmp_path))

    python3 = str(tmp_path / "bin" / "python3")
    assert any("no virtualenv is active: making one in .venv" in line for line in lines)
    assert f"+ {python3} -m venv .venv" in lines
    assert "+ .venv/bin/python -m pip install torch==2.13.0" in lines
    assert "+ .venv/bin/python -m pip install -e .[dev]" in lines  # embed is opt-in
    assert not any("--quiet" in line or " -q" in line for line in lines)
    assert lines[-1] == "next: source .venv/bin/activate && inferq up"


def test_a_venv_made_before_is_reused(clone: Path, tmp_path: Path) -> None:
    (clone / ".venv" / "bin").mkdir(parents=True)
    (clone / ".venv" / "bin" / "python").symlink_to(sys.executable)

    lines = setup(clone, PATH=debian_path(tmp_path))

    assert any("reusing .venv" in line for line in lines)
    assert not any("-m venv" in line for line in lines)
    # and the tests and the linters run with it
    found = subprocess.run(
        ["bash", "-c", ". scripts/python.sh && inferq_python"],
        cwd=clone,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
    )
    assert found.stdout.strip() == str(clone / ".venv" / "bin" / "python")


def test_an_active_venv_is_installed_into(clone: Path, tmp_path: Path) -> None:
    lines = setup(clone, PATH=debian_path(tmp_path), VIRTUAL_ENV="/opt/env")

    assert any("installing into the active virtualenv /opt/env" in line for line in lines)
    assert "+ /opt/env/bin/python -m pip install -e .[dev]" in lines
    assert lines[-1] == "next: inferq up"


def test_ci_installs_into_the_current_interpreter_with_the_extras_it_names(
    clone: Path, tmp_path: Path
) -> None:
    lines = setup(clone, "--system", "--with", "embed", PATH=debian_path(tmp_path))

    python3 = str(tmp_path / "bin" / "python3")
    assert f"+ {python3} -m pip install -e .[dev,embed]" in lines
    assert not (clone / ".venv").exists()
    assert lines[-1] == "next: inferq up"
    assert "scripts/setup --system --with embed" in (ROOT / ".ci" / "run").read_text()
