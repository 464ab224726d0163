"""The whole system as `inferq up` runs it (nginx, two API nodes, two workers, beat, all under
supervisord), pointed at the fault suite's own Postgres, Redis and RabbitMQ."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import requests
from sqlalchemy import create_engine, text

from inferq.core.settings import Settings
from tests.processes import free_port

#: Recovery timings short enough for a test, each explained in inferq/core/settings.py.
FAST = {
    "INFERQ_HEARTBEAT_INTERVAL_S": "0.5",
    "INFERQ_HEARTBEAT_TTL_S": "3",
    "INFERQ_RECONCILE_INTERVAL_S": "1",
    "INFERQ_VISIBILITY_TIMEOUT_S": "10",
    "INFERQ_STALE_QUEUED_S": "15",
    "INFERQ_JOB_TIME_LIMIT_S": "30",
    "INFERQ_STALL_EXIT_S": "20",
    "INFERQ_PUBLISH_TIMEOUT_S": "1",
}

LEDGER = """
CREATE TABLE IF NOT EXISTS fault_terminal_log (job_id uuid, status text, at timestamptz DEFAULT clock_timestamp());
CREATE OR REPLACE FUNCTION fault_log_terminal() RETURNS trigger AS $$
BEGIN
  IF NEW.status IN ('succeeded', 'failed', 'canceled')
     AND OLD.status NOT IN ('succeeded', 'failed', 'canceled') THEN
    INSERT INTO fault_terminal_log (job_id, status) VALUES (NEW.id, NEW.status);
  END IF;
  RETURN NEW;
END $$ LANGUAGE plpgsql;
DROP TRIGGER IF EXISTS fault_log_terminal ON jobs;
CREATE TRIGGER fault_log_terminal AFTER UPDATE ON jobs FOR EACH ROW EXECUTE FUNCTION fault_log_terminal();
"""


class System:
    """`inferq up --api-nodes 2 --workers 2` in a home of its own; with no broker and Redis
    URLs, on the Redis that `inferq up` runs itself (embedded, under supervisord)."""

    def __init__(
        self,
        home: Path,
        database_url: str,
        broker_url: str | None,
        redis_url: str | None,
        namespace: str,
        *,
        env: dict[str, str] | None = None,
        api_nodes: int = 2,
        workers: int = 2,
    ) -> None:
        self.home, self.port = home, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.database_url = database_url
        configured = {"INFERQ_BROKER_URL": broker_url, "INFERQ_REDIS_URL": redis_url}
        self.env = {
            **{k: v for k, v in os.environ.items() if k not in configured},
            **FAST,
            "INFERQ_HOME": str(home),
            "INFERQ_DATABASE_URL": database_url,
            **{k: v for k, v in configured.items() if v},
            "INFERQ_NAMESPACE": namespace,
            "PYTHONUNBUFFERED": "1",
            **(env or {}),
        }
        self.log = (home / "up.out").open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "inferq",
                "up",
                "--port",
                str(self.port),
                "--api-nodes",
                str(api_nodes),
                "--workers",
                str(workers),
            ],
            env=self.env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            self.wait_ready(timeout=180)
            self.key = (home / "dev-api-key").read_text().strip()
            engine = create_engine(database_url)
            with engine.begin() as conn:
                conn.execute(text(LEDGER))
            engine.dispose()
        except BaseException:
            self.stop()  # no fixture holds a system that never came up: stop it here
            raise

    def settings(self) -> Settings:
        """This system's settings, with the Redis `inferq up` runs when it runs one."""
        given = {k: v for k, v in self.env.items() if k.startswith("INFERQ_")}
        return Settings.from_env(given, **self.services())

    def services(self) -> dict[str, str]:
        """The URLs `inferq up` handed its processes (services.json)."""
        record = json.loads((self.home / "services.json").read_text())
        return {k: v for k, v in record.items() if v}

    def wait_ready(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"inferq up exited: {(self.home / 'up.out').read_text()[-3000:]}"
                )
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    return
            except requests.RequestException:
                pass
            time.sleep(0.3)
        raise TimeoutError(f"not ready after {timeout}s")

    def supervisorctl(self, *args: str) -> str:
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "supervisor.supervisorctl",
                "-c",
                str(self.home / "supervisord.conf"),
                *args,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
        return result.stdout.strip()

    def pid(self, program: str) -> int:
        return int(self.supervisorctl("pid", program))

    def kill(
        self, program: str, sig: signal.Signals = signal.SIGKILL, pid: int | None = None
    ) -> int:
        """Signal a supervised program's process tree (supervisord restarts it)."""
        pid = pid or self.pid(program)
        procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
        for proc in procs:
            proc.send_signal(sig)
        return pid

    def wait_running(self, program: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if "RUNNING" in self.supervisorctl("status", program):
                return
            time.sleep(0.5)
        raise TimeoutError(f"{program} not running again after {timeout}s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.log.close()
