"""Worker processes on this host: the autoscaler starts ``inferq worker`` children itself."""

from __future__ import annotations

import itertools
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from inferq.core.scrape import WORKERS_JOB, free_port, set_group
from inferq.core.settings import Settings
from scheduler.backends import idle_first

log = logging.getLogger(__name__)


class LocalBackend:
    """``inferq worker`` subprocesses named ``<prefix>-<n>``, logs in ``logs``.

    With ``metrics_targets`` (a Prometheus file_sd file: ``inferq up``'s), each worker serves
    its metrics on a free loopback port of its own, and the file's group labelled
    ``{"job": "inferq-workers", "pool": <prefix>}`` lists the workers alive, kept up to date
    as they start and exit.
    """

    name = "local"

    def __init__(
        self,
        settings: Settings,
        logs: Path,
        prefix: str = "auto",
        lanes: str | None = None,
        metrics_targets: Path | None = None,
    ) -> None:
        self._settings = settings
        self._logs = logs
        self._prefix = prefix
        self._lanes = lanes or settings.worker.worker_lanes
        self._targets = metrics_targets
        self._numbers = itertools.count(1)
        self._running: dict[str, subprocess.Popen[bytes]] = {}
        self._draining: dict[str, subprocess.Popen[bytes]] = {}
        self._ports: dict[str, int] = {}

    @property
    def metrics_ports(self) -> dict[str, int]:
        """The metrics port of each worker alive (none without ``metrics_targets``)."""
        self._reap()
        return dict(self._ports)

    @property
    def workers(self) -> list[str]:
        """Names of the workers running or starting, oldest first."""
        self._reap()
        return list(self._running)

    @property
    def draining(self) -> list[str]:
        """Names of the workers told to stop that have not exited yet."""
        self._reap()
        return list(self._draining)

    def current(self) -> int:
        return len(self.workers)

    def scale(self, desired: int, busy: frozenset[str]) -> None:
        have = self.current()
        for _ in range(desired - have):
            self._start()
        if desired < have:
            for name in idle_first(list(self._running), busy, have - desired):
                self._stop(name)

    def wait_drained(self, timeout: float) -> bool:
        """Until every draining worker has exited (True) or ``timeout`` passes (False)."""
        deadline = time.monotonic() + timeout
        while self.draining:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def close(self, timeout: float = 30.0) -> None:
        """Stop every worker drain-safely; SIGKILL what has not exited after ``timeout``."""
        for name in list(self._running):
            self._stop(name)
        if not self.wait_drained(timeout):
            for proc in self._draining.values():
                os.killpg(proc.pid, signal.SIGKILL)

    def _start(self) -> None:
        name = f"{self._prefix}-{next(self._numbers)}"
        env = {**os.environ, **self._settings.to_env(), "PYTHONUNBUFFERED": "1"}
        # The autoscaler's own metrics port is not theirs: several children cannot share it.
        env["INFERQ_METRICS_PORT"] = "0"
        if self._targets is not None:
            self._ports[name] = free_port()
            env["INFERQ_METRICS_PORT"] = str(self._ports[name])
        self._logs.mkdir(parents=True, exist_ok=True)
        with (self._logs / f"{name}.log").open("ab") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "inferq", "worker", "--name", name, "--lanes", self._lanes],
                env=env,
                stdout=log_file,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._running[name] = proc
        log.info("started worker %s (pid %d)", name, proc.pid)
        self._publish_targets()

    def _stop(self, name: str) -> None:
        proc = self._running.pop(name)
        # SIGTERM once: Celery's warm shutdown (a second one would make it cold).
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        self._draining[name] = proc
        log.info("draining worker %s (pid %d)", name, proc.pid)

    def _reap(self) -> None:
        exited = False
        for pool in (self._running, self._draining):
            for name, proc in list(pool.items()):
                if proc.poll() is not None:
                    log.info("worker %s exited with %s", name, proc.returncode)
                    del pool[name]
                    exited = self._ports.pop(name, None) is not None or exited
        if exited:
            self._publish_targets()

    def _publish_targets(self) -> None:
        if self._targets is None:
            return
        labels = {"job": WORKERS_JOB, "pool": self._prefix}
        try:
            set_group(self._targets, labels, [f"127.0.0.1:{p}" for p in self._ports.values()])
        except OSError:  # metrics are no reason to stop scaling
            log.exception("could not update the scrape targets in %s", self._targets)
