"""In CI (CI=true) a skipped test fails the run and is named with its reason; locally a skip
stays a skip. Runs pytest on tiny throwaway test files with this suite's tests/conftest.py."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SKIPS = """
import pytest

def test_runs():
    assert True

def test_needs_a_widget():
    pytest.skip("no widget on this machine")
"""
#: A module that skips as a whole when it is collected, as an ``importorskip`` does.
SKIPS_AT_COLLECTION = """
import pytest

pytest.importorskip("inferq_no_such_module", reason="the gadget extra is not installed")

def test_gadget():
    assert True
"""
PASSES = """
import pytest

def test_runs():
    assert True

@pytest.mark.xfail(reason="known bug", strict=True)
def test_known_bug():
    assert False
"""


def run_pytest(folder: Path, ci: bool) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("CI", "PYTEST_ADDOPTS")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # hypothesis, schemathesis…: seconds, not needed
    if ci:
        env["CI"] = "true"
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-p", "tests.conftest", "-q"],
        cwd=folder,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def write(folder: Path, **files: str) -> Path:
    folder.mkdir()
    for name, text in files.items():
        (folder / f"{name}.py").write_text(text)
    return folder


def test_a_skip_fails_the_run_in_ci_and_names_each_skipped_test_with_its_reason(
    tmp_path: Path,
) -> None:
    """Catches: the hook missing or not registered when CI=true (the run exits 0 with skips),
    a module skipped at collection (importorskip) left out of the list, and reasons dropped."""
    folder = write(tmp_path / "skips", test_tiny=SKIPS, test_gadget=SKIPS_AT_COLLECTION)

    result = run_pytest(folder, ci=True)

    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "CI: 2 skipped, and nothing may skip in CI: the run fails" in output
    assert "SKIPPED test_tiny.py::test_needs_a_widget: no widget on this machine" in output
    assert "SKIPPED test_gadget.py: the gadget extra is not installed" in output


def test_locally_a_skip_is_only_a_skip(tmp_path: Path) -> None:
    """Catches: the hook failing runs outside CI (registered whatever CI says)."""
    folder = write(tmp_path / "skips", test_tiny=SKIPS, test_gadget=SKIPS_AT_COLLECTION)

    result = run_pytest(folder, ci=False)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "2 skipped" in output and "nothing may skip" not in output


def test_a_ci_run_without_skips_passes(tmp_path: Path) -> None:
    """Catches: the hook failing every CI run, or counting an expected failure (xfail, which
    pytest reports as skipped) as a skip."""
    folder = write(tmp_path / "passes", test_tiny=PASSES)

    result = run_pytest(folder, ci=True)

    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "1 passed, 1 xfailed" in output
