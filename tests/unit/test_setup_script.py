"""scripts/setup on a newcomer's machine: only python3 on PATH, no virtualenv active. It
makes (or reuses) .venv and says so, installs CPU torch from PyTorch's CPU index (or says
why not), lets pip show its progress, and ends with the next command; scripts/lint and
scripts/test then use the interpreter it installed into.
Run with INFERQ_SETUP_DRY_RUN=1 (the commands are printed, nothing is installed), or with a
stand-in interpreter that records what it was asked; the CPU index is a local HTTP server."""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
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


@pytest.fixture
def cpu_index(tmp_path: Path) -> Iterator[str]:
    """A package index on loopback that answers for torch, standing in for PyTorch's."""
    (tmp_path / "index" / "torch").mkdir(parents=True)
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "index")
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/cpu"
    server.shutdown()
    server.server_close()


#: An index nothing answers on (a refused connection, as where the internet is unreachable).
UNREACHABLE = "http://127.0.0.1:9/cpu"


def stand_in_venv(tmp_path: Path, torch: str = "") -> Path:
    """A virtualenv whose python records each call in ``calls``, reports ``torch`` as the
    version installed (none when empty), and fails any pip install from an ``--index-url``."""
    env = tmp_path / "env"
    (env / "bin").mkdir(parents=True)
    script = f"""#!/bin/sh
echo "$*" >> {env}/calls
case "$1" in
  -c) [ -n "{torch}" ] && echo "{torch}" && exit 0; exit 1 ;;
esac
case "$*" in *--index-url*) exit 1 ;; esac
exit 0
"""
    (env / "bin" / "python").write_text(script)
    (env / "bin" / "python").chmod(0o755)
    return env


def setup(clone: Path, *args: str, dry_run: bool = True, **env: str) -> list[str]:
    base = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PATH")}
    base["INFERQ_SETUP_TORCH_INDEX"] = UNREACHABLE
    if dry_run:
        base["INFERQ_SETUP_DRY_RUN"] = "1"
    done = subprocess.run(
        ["bash", "scripts/setup", *args],
        cwd=clone,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.splitlines()


def test_with_no_venv_active_setup_makes_one_and_says_how_to_go_on(
    clone: Path, tmp_path: Path, cpu_index: str
) -> None:
    """Catches: `python: command not found` (exit 127) where only python3 exists, an install
    into the global interpreter without a word, 80 s of silence, no next step, and a plain
    `pip install torch`, which on Linux x86_64 is the multi-GB CUDA build. Mutation tried:
    the torch line without `--index-url` (fails)."""
    lines = setup(clone, PATH=debian_path(tmp_path), INFERQ_SETUP_TORCH_INDEX=cpu_index)

    python3 = str(tmp_path / "bin" / "python3")
    assert any("no virtualenv is active: making one in .venv" in line for line in lines)
    assert f"+ {python3} -m venv .venv" in lines
    assert any(f"CPU torch 2.13.0 from PyTorch's CPU index {cpu_index}" in line for line in lines)
    assert f"+ .venv/bin/python -m pip install --index-url {cpu_index} torch==2.13.0" in lines
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


def test_where_the_cpu_index_cannot_be_reached_setup_says_what_it_installs_instead(
    clone: Path, tmp_path: Path
) -> None:
    """Without a network to PyTorch's index, pip pointed there retries five times a package
    (78 s measured here) and fails: setup checks first, says why, and what the other index
    gives. Mutation tried: no reachability check (fails: pip is sent to the dead index)."""
    lines = setup(clone, PATH=debian_path(tmp_path), INFERQ_SETUP_TORCH_INDEX=UNREACHABLE)

    text = "\n".join(lines)
    assert f"PyTorch's CPU index {UNREACHABLE} cannot be reached (" in text
    assert "CUDA build (several GB)" in text
    assert "+ .venv/bin/python -m pip install torch==2.13.0" in lines
    assert not any("--index-url" in line for line in lines)


def test_when_the_cpu_index_fails_pip_setup_falls_back_and_says_so(
    clone: Path, tmp_path: Path, cpu_index: str
) -> None:
    """The index answers but has no torch 2.13.0 for this platform: pip fails there, and setup
    goes on with pip's own index. Mutation tried: dropping the `|| fallback` (setup exits 1)."""
    env = stand_in_venv(tmp_path)

    lines = setup(
        clone,
        dry_run=False,
        PATH=debian_path(tmp_path),
        VIRTUAL_ENV=str(env),
        INFERQ_SETUP_TORCH_INDEX=cpu_index,
    )

    calls = (env / "calls").read_text().splitlines()
    assert f"-m pip install --index-url {cpu_index} torch==2.13.0" in calls
    assert "-m pip install torch==2.13.0" in calls  # then pip's own index
    assert "-m pip install -e .[dev]" in calls
    assert any("the CPU index did not give torch 2.13.0" in line for line in lines)
    assert lines[-1] == "next: inferq up"


@pytest.mark.parametrize("installed", ["2.13.0+cu128", "2.13.0+cpu", "2.13.0"])
def test_a_torch_already_installed_is_kept(clone: Path, tmp_path: Path, installed: str) -> None:
    """A GPU user's CUDA torch stays. Catches: reinstalling (or replacing) torch each run.
    Mutation tried: comparing the whole version to 2.13.0 (fails for +cu128 and +cpu)."""
    env = stand_in_venv(tmp_path, torch=installed)

    lines = setup(clone, dry_run=False, PATH=debian_path(tmp_path), VIRTUAL_ENV=str(env))

    assert f"==> torch {installed} is installed already: kept" in lines
    calls = (env / "calls").read_text().splitlines()
    assert not any("torch==" in call for call in calls)
    assert "-m pip install -e .[dev]" in calls


def test_every_script_runs_where_only_python3_exists() -> None:
    """Debian has no `python` outside a virtualenv. Mutation tried: scripts/gpu-check back on
    `#!/usr/bin/env python` (fails)."""
    for script in sorted((ROOT / "scripts").iterdir()):
        first = script.read_text().splitlines()[0]
        if first.startswith("#!"):
            assert first in ("#!/usr/bin/env bash", "#!/usr/bin/env python3"), script.name
