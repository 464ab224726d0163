"""Real service processes for the tests: API nodes, workers and the scheduler."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

from inferq.core.settings import Settings


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """One ``inferq <command>`` child with its log in a file."""

    def __init__(self, name: str, args: list[str], settings: Settings, logs: Path) -> None:
        self.name = name
        self.log_path = logs / f"{name}.log"
        env = {**os.environ, **settings.to_env(), "PYTHONUNBUFFERED": "1"}
        self._log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "inferq", *args],
            env=env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def pause(self) -> None:
        """SIGSTOP the whole process group: it changes nothing until resumed or killed."""
        os.killpg(self.proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """SIGCONT the whole process group."""
        os.killpg(self.proc.pid, signal.SIGCONT)

    def kill(self) -> None:
        """SIGKILL the whole process group, as a crash or the OOM killer would."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=10)

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL if it does not exit in time."""
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_for_http(url: str, proc: ServiceProcess, timeout: float = 60.0) -> None:
    """Until ``url`` answers 200, or fail with the process's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log()[-3000:]}")
        try:
            if requests.get(url, timeout=2).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout}s:\n{proc.log()[-3000:]}")


def wait_for_log(proc: ServiceProcess, needle: str, timeout: float = 60.0) -> None:
    """Until ``needle`` appears in the process's log."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in proc.log():
            return
        if not proc.alive():
            raise RuntimeError(f"{proc.name} exited:\n{proc.log()[-3000:]}")
        time.sleep(0.2)
    raise TimeoutError(
        f"{proc.name}: {needle!r} not logged after {timeout}s:\n{proc.log()[-3000:]}"
    )
