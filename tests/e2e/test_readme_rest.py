"""README's REST walk-through and its Python client snippet, run as written against a real
API and worker: the README cannot drift from the product without this failing."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.e2e.conftest import Stack

ROOT = Path(__file__).resolve().parents[2]


def readme_section(name: str, language: str) -> str:
    """Every ``language`` fenced block between ``<!-- name:begin`` and ``<!-- name:end``,
    joined in order."""
    text = (ROOT / "README.md").read_text()
    section = text.split(f"<!-- {name}:begin")[1].split(f"<!-- {name}:end -->")[0]
    blocks = re.findall(rf"```{language}\n(.*?)```", section, re.S)
    assert blocks, f"no {language} block in the README's {name} section"
    return "\n".join(blocks)


def test_the_readme_rest_walk_through_runs_as_written(
    settings: Settings, keys: Keys, stacks: Callable[[Settings, int], Stack], tmp_path: Path
) -> None:
    """Catches: a README curl example that fails, or a submit that does not show the 202 and
    the 200 the text describes."""
    own = settings.replace(namespace=settings.namespace + "rest")
    stack = stacks(own, 1)
    env = {**os.environ, **own.to_env(), "INFERQ_URL": stack.url, "INFERQ_API_KEY": keys.alice}
    script = "set -euo pipefail\n" + readme_section("rest", "bash")
    done = subprocess.run(
        ["bash", "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    statuses = re.findall(r"^HTTP/1\.[01] (\d{3})", done.stdout, re.M)
    assert statuses == ["202", "200"], done.stdout  # the submit, then the waiting submit
    assert re.search(r"^Location: /v1/jobs/[0-9a-f-]{36}", done.stdout, re.M | re.I)
    assert '"status":"succeeded"' in done.stdout.replace(" ", ""), done.stdout
    assert "already succeeded" in done.stdout  # the cancel of a finished job: a 409 problem


def test_the_readme_python_client_snippet_runs_as_written(
    settings: Settings, keys: Keys, stacks: Callable[[Settings, int], Stack], tmp_path: Path
) -> None:
    """Catches: a client snippet that uses names it never defines, or calls the client as it
    no longer takes."""
    own = settings.replace(namespace=settings.namespace + "py")
    stack = stacks(own, 1)
    env = {**os.environ, "INFERQ_URL": stack.url, "INFERQ_API_KEY": keys.alice}
    done = subprocess.run(
        [sys.executable, "-c", readme_section("python-client", "python")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, f"{done.stdout}\n{done.stderr}"
    status, label = done.stdout.split()
    assert status == "succeeded" and label in "0123456789", done.stdout
