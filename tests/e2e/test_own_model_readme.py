"""README's "Serve your own model", run as written against real services: train, check,
register, and a job answered by the user's model through the API and a worker."""

from __future__ import annotations

import json
import os
import re
import subprocess
from collections.abc import Callable
from pathlib import Path

from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.e2e.conftest import Stack

ROOT = Path(__file__).resolve().parents[2]


def readme_block(name: str) -> list[str]:
    """The commands of a fenced block between ``<!-- name:begin -->`` and its end marker."""
    text = (ROOT / "README.md").read_text()
    block = text.split(f"<!-- {name}:begin -->")[1].split(f"<!-- {name}:end -->")[0]
    body = re.search(r"```bash\n(.*?)```", block, re.S)
    assert body is not None, f"no bash block in the README's {name} section"
    return [line for line in body.group(1).splitlines() if line.strip()]


def test_the_readme_serves_a_user_model_end_to_end(
    settings: Settings, keys: Keys, stacks: Callable[[Settings, int], Stack], tmp_path: Path
) -> None:
    """Catches: any step of the README section that no longer works as written."""
    own = settings.replace(namespace=settings.namespace + "own")
    stack = stacks(own, 1)
    work = tmp_path / "work"
    work.mkdir()
    (work / "examples").symlink_to(ROOT / "examples")  # the repository's root, as the README has it
    env = {
        **os.environ,
        **own.to_env(),
        "INFERQ_URL": stack.url,
        "INFERQ_API_KEY": keys.alice,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(work), os.environ.get("PYTHONPATH")])),
    }
    outputs = []
    for command in readme_block("own-model"):
        done = subprocess.run(
            ["bash", "-c", command], cwd=work, env=env, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        outputs.append(done.stdout)
    job = json.loads(outputs[-1])
    assert job["status"] == "succeeded", job
    assert job["model"] == "iris" and job["output"]["species"] == "virginica"
