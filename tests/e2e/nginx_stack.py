"""Helpers for tests that go through real nginx: find it, run it, read its JSON access log."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from inferq.core.settings import Settings
from inferq.local import nginx
from tests.processes import free_port
from tests.services import CI


def nginx_binary() -> str:
    """The nginx the stack would use; skips locally without one, fails in CI."""
    binary = nginx.find_nginx("auto")
    if binary is None:
        if CI:
            pytest.fail("CI: nginx is not installed (.ci/run installs it)")
        pytest.skip("nginx is not installed (apt-get install nginx)")
    return binary


class Nginx:
    """nginx rendered from the shared template and run in the foreground, as `inferq up` does."""

    def __init__(self, settings: Settings, home: Path, node_ports: list[int]) -> None:
        self.paths = nginx.NginxPaths(home)
        self.url = f"http://127.0.0.1:{settings.local.port}"
        binary = nginx_binary()
        nginx.write_config(settings, self.paths, node_ports)
        nginx.check_config(binary, self.paths)
        self.proc = subprocess.Popen(
            nginx.command(binary, self.paths),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self._wait_healthy()

    def _wait_healthy(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nginx exited: {self.paths.error_log.read_text()[-2000:]}")
            try:
                if requests.get(self.url + "/nginx-healthz", timeout=1).status_code == 200:
                    return
            except requests.RequestException:
                time.sleep(0.05)
        raise TimeoutError(f"nginx at {self.url} did not answer in {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def access_log(self) -> list[dict[str, Any]]:
        return read_access_log(self.paths.access_log)


def read_access_log(path: Path) -> list[dict[str, Any]]:
    """nginx's JSON access log, one record per request (nginx writes each line whole)."""
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


ROOT = Path(__file__).resolve().parents[2]
UP_TIMEOUT_S = 180.0


class UpStack:
    """``inferq up`` as a child process, on this test session's Postgres, Redis and namespace."""

    def __init__(self, settings: Settings, home: Path, args: list[str], **env: str) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.stderr = home.parent / f"{home.name}.stderr"
        home.mkdir(parents=True, exist_ok=True)
        base = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
        self.env = {
            **base,
            **settings.to_env(),
            "INFERQ_HOME": str(home),
            "PYTHONUNBUFFERED": "1",
            **env,
        }
        with self.stderr.open("wb") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "inferq", "up", "--port", str(self.port), *args],
                cwd=ROOT,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=err,
                start_new_session=True,
            )

    def wait_up(self) -> None:
        deadline = time.monotonic() + UP_TIMEOUT_S
        while time.monotonic() < deadline:
            if "inferq is up at" in self.output():
                return
            if self.proc.poll() is not None:
                raise RuntimeError(f"inferq up exited with {self.proc.returncode}:\n{self.tail()}")
            time.sleep(0.3)
        raise TimeoutError(f"inferq up not ready after {UP_TIMEOUT_S:.0f} s:\n{self.tail()}")

    def output(self) -> str:
        return self.stderr.read_text(errors="replace") if self.stderr.exists() else ""

    def tail(self, chars: int = 4000) -> str:
        return self.output()[-chars:]

    def program_pid(self, name: str) -> int:
        """The pid supervisord has for program ``name`` (``group:program`` in a group)."""
        result = subprocess.run(
            [sys.executable, "-m", "supervisor.supervisorctl", "-c",
             str(self.home / "supervisord.conf"), "pid", name],
            capture_output=True, text=True, timeout=30, check=True,
        )  # fmt: skip
        return int(result.stdout.strip())

    def node_port(self, name: str) -> int:
        """The loopback port of API node ``name`` (from its command line)."""
        argv = psutil.Process(self.program_pid(name)).cmdline()
        return int(argv[argv.index("--port") + 1])

    def log(self, program: str) -> str:
        path = self.home / "logs" / f"{program}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def nginx_log(self) -> list[dict[str, Any]]:
        return read_access_log(nginx.NginxPaths(self.home).access_log)

    def stop(self, timeout: float = 120.0) -> None:
        """SIGTERM ``inferq up`` (what Ctrl-C does) and wait; kill what is left after that."""
        if self.proc.poll() is not None:
            return
        left = psutil.Process(self.proc.pid).children(recursive=True)
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            for process in [psutil.Process(self.proc.pid), *left]:
                with contextlib.suppress(psutil.Error):
                    process.kill()
            self.proc.wait(10)


def api_access_lines(log: str) -> list[dict[str, Any]]:
    """The API node's per-request JSON lines (api/app.py) found in a supervisord log."""
    found = []
    for line in log.splitlines():
        if '"inferq.api.access"' in line:
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
    return found


def at_once(url: str, headers: dict[str, str], count: int) -> list[requests.Response]:
    """``count`` GETs released together from as many threads (each its own connection), so
    nginx sees them arrive at once however long the ones it lets through take to answer."""
    start = threading.Barrier(count)

    def get(_: int) -> requests.Response:
        start.wait(timeout=30)
        return requests.get(url, headers=headers, timeout=30)

    with ThreadPoolExecutor(count) as pool:
        return list(pool.map(get, range(count)))
