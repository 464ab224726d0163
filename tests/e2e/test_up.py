"""``inferq up`` on a bare machine: embedded services, a job through the stack, a clean ``down``."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.e2e.test_readme_rest import readme_section
from tests.processes import free_port

ROOT = Path(__file__).resolve().parents[2]
INFERQ = [sys.executable, "-m", "inferq"]
UP_TIMEOUT_S = 240.0  # the first start trains digits


def bare_env(home: Path) -> dict[str, str]:
    """The environment of a machine where nothing of inferq is configured but its home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    return {**env, "INFERQ_HOME": str(home), "PYTHONUNBUFFERED": "1"}


def wait_until_up(up: subprocess.Popen[bytes], stderr: Path) -> None:
    deadline = time.monotonic() + UP_TIMEOUT_S
    while time.monotonic() < deadline:
        if "inferq is up at" in stderr.read_text(errors="replace"):
            return
        if up.poll() is not None:
            pytest.fail(f"inferq up exited with {up.returncode}:\n{tail(stderr)}")
        time.sleep(0.5)
    pytest.fail(f"inferq up not ready after {UP_TIMEOUT_S:.0f} s:\n{tail(stderr)}")


def tail(path: Path, chars: int = 4000) -> str:
    return path.read_text(errors="replace")[-chars:] if path.exists() else "(no output)"


def stack_processes(up: subprocess.Popen[bytes], home: Path) -> list[psutil.Process]:
    """Everything ``up`` started: its descendants, and the postmaster, which pg_ctl detached."""
    found = psutil.Process(up.pid).children(recursive=True)
    postmaster = int((home / "postgres" / "postmaster.pid").read_text().splitlines()[0])
    return [*found, psutil.Process(postmaster)]


def still_running(processes: list[psutil.Process]) -> list[str]:
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{process.pid} {' '.join(process.cmdline())}")
        except psutil.NoSuchProcess:
            pass
    return alive


@pytest.fixture
def up(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], Path, Path]]:
    home = tmp_path / "var"  # ./var, as `inferq up` makes it with no INFERQ_HOME set
    stderr = tmp_path / "up.stderr"
    with stderr.open("wb") as err:
        process = subprocess.Popen(
            # Workers come from the autoscaler (local backend), between one and two.
            [*INFERQ, "up", "--port", str(free_port()), "--autoscale", "1:2"],
            cwd=ROOT,
            env=bare_env(home),
            stdin=subprocess.DEVNULL,
            stdout=err,
            stderr=err,
            start_new_session=True,
        )
    yield process, home, stderr
    if process.poll() is None:  # the test failed half-way: leave nothing behind
        left = stack_processes(process, home) if (home / "postgres").exists() else []
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(120)
        except subprocess.TimeoutExpired:
            for leftover in [psutil.Process(process.pid), *left]:
                leftover.kill()


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_up_serves_a_digit_and_down_leaves_nothing_running(up: tuple) -> None:
    """Also ``--autoscale``: down drains the autoscaler's workers too (they are in `started`),
    and the autoscaler and its workers serve metrics where the targets file says. Mutation
    tried: the autoscaler looking up `getattr(settings, "metrics_port")` again, which is
    never there (fails: its target refuses the connection). The README's REST walk-through
    and client snippet run against this stack as a newcomer's shell would (issue 19):
    tried with `inferq keys create` in the walk-through and services.json not written
    (fails: the admin command finds no database)."""
    process, home, stderr = up
    env = bare_env(home)

    # Given `inferq up` on a machine with no database or broker configured
    wait_until_up(process, stderr)
    assert "CRIT" not in stderr.read_text(), tail(stderr)  # supervisord has nothing to warn
    # and every admin command the README names finds its database with nothing set
    for args in (["keys", "list"], ["models", "list"], ["scaling"]):
        done = subprocess.run(
            [*INFERQ, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, (args, done.stderr)
    started = stack_processes(process, home)
    assert {"supervisord", "redis-server", "postgres"} <= names(started)

    # When a client runs the banner's example as pasted, from the directory `up` runs in
    (example,) = [line for line in stderr.read_text().splitlines() if "try:" in line]
    command = example.split("try:", 1)[1].strip()
    assert command.startswith("inferq submit ")
    submit = subprocess.run(
        ["bash", "-c", command.replace("inferq", shlex.join(INFERQ), 1)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip

    # Then the job succeeded with a label, on a worker the autoscaler started, which was
    # consuming already: "up" means a job submitted now runs, not waits for a worker to start
    assert submit.returncode == 0, submit.stderr
    job = json.loads(submit.stdout)
    assert job["status"] == "succeeded", job
    assert job["metrics"]["queue_ms"] < 2500, job["metrics"]
    assert job["worker"].startswith("auto-"), job["worker"]
    started += [p for p in stack_processes(process, home) if p not in started]
    assert any("worker" in " ".join(p.cmdline()) for p in started if p.is_running())
    label = job["output"]["label"]
    assert isinstance(label, int) and 0 <= label <= 9
    # and the database's address is kept for the CLI readable by its owner alone
    assert stat.S_IMODE((home / "services.json").stat().st_mode) == 0o600
    # and every process serves metrics where the targets file says: the autoscaler and the
    # worker it started too (before: neither had a port, nor a target)
    metrics = scrape_every_target(home / "prometheus-targets.json")
    assert "inferq_autoscaler_workers" in metrics["inferq-autoscaler"], metrics
    assert 'inferq_worker_jobs_total{model="digits",status="succeeded"}' in metrics["auto-online"]

    # When a newcomer runs the README's REST walk-through and Python client snippet as
    # written, from the directory that holds `var/`, with nothing set but the stack's URL
    # (this test's port instead of 8080): they read the key from var/dev-api-key and the
    # admin command in them finds the database from var/services.json
    newcomer = {k: v for k, v in env.items() if not k.startswith("INFERQ_")}
    newcomer["INFERQ_URL"] = url_of(stderr)
    rest = subprocess.run(
        ["bash", "-c", "set -euo pipefail\n" + readme_section("rest", "bash")],
        cwd=home.parent, env=newcomer, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert rest.returncode == 0, f"{rest.stdout}\n{rest.stderr}"
    statuses = re.findall(r"^HTTP/1\.[01] (\d{3})", rest.stdout, re.M)
    assert statuses == ["202", "200"], rest.stdout  # the submit, then the waiting submit
    client = subprocess.run(
        [sys.executable, "-c", readme_section("python-client", "python")],
        cwd=home.parent, env=newcomer, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert client.returncode == 0, f"{client.stdout}\n{client.stderr}"
    assert client.stdout.split()[0] == "succeeded", client.stdout

    # When `inferq down` runs, then `up` exits cleanly and nothing it started is left
    down = subprocess.run(
        [*INFERQ, "down"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=150
    )
    assert down.returncode == 0, down.stderr
    assert process.wait(30) == 0, tail(stderr)
    assert still_running(started) == []
    assert not (home / "up.json").exists()


def url_of(stderr: Path) -> str:
    """The URL the banner says the stack is up at."""
    found = re.search(r"inferq is up at (http://\S+)", stderr.read_text())
    assert found is not None, tail(stderr)
    return found.group(1).rstrip("/")


def names(processes: list[psutil.Process]) -> set[str]:
    found = set()
    for process in processes:
        text = " ".join([process.name(), *process.cmdline()])
        found |= {name for name in ("supervisord", "redis-server", "postgres") if name in text}
    return found


def scrape_every_target(path: Path) -> dict[str, str]:
    """Every ``/metrics`` the targets file names, read; by scrape job (an autoscaler's
    workers by their pool), the bodies of a group's targets joined. Only the online lane
    counts for "up": the other lanes' workers may still be starting."""
    bodies: dict[str, str] = {}
    for group in json.loads(path.read_text()):
        key = group["labels"].get("pool", group["labels"]["job"])
        for target in group["targets"]:
            bodies[key] = bodies.get(key, "") + scrape(f"http://{target}/metrics", key)
    return bodies


def scrape(url: str, what: str, timeout: float = 90.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=10) as answer:
                return str(answer.read().decode())
        except OSError as exc:
            if time.monotonic() > deadline:
                pytest.fail(f"{what} at {url}: {exc}")
            time.sleep(0.5)
