"""``inferq autoscaler`` runs as its own process, records decisions, stops on SIGTERM;
``inferq scaling`` prints them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from sqlalchemy import create_engine, text

from inferq.core.settings import Settings
from tests.processes import ServiceProcess


def decisions(settings: Settings) -> list[tuple[str, int]]:
    engine = create_engine(settings.database_url or "")
    with engine.connect() as conn:
        rows = conn.execute(
            text(
                "SELECT reason, desired FROM scaling_decisions"
                " WHERE pool = 'webhooks' AND backend = 'dry-run'"
            )
        )
        found = [(r[0], int(r[1])) for r in rows]
    engine.dispose()
    return found


def test_the_autoscaler_command_records_decisions_and_stops_on_sigterm(
    settings: Settings, tmp_path: Path
) -> None:
    # Given the autoscaler of the webhooks pool, dry run, min 2 workers
    args = ["autoscaler", "--backend", "dry-run", "--lanes", "webhooks", "--poll", "0.2"]
    proc = ServiceProcess("autoscaler", [*args, "--min-workers", "2"], settings, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while not decisions(settings):
            assert proc.alive(), proc.log()
            assert time.monotonic() < deadline, proc.log()
            time.sleep(0.2)
    finally:
        proc.stop(timeout=10)
    # Then it scaled to min_workers and exited cleanly on SIGTERM
    assert proc.proc.returncode == 0, proc.log()
    assert decisions(settings)[0][1] == 2
    # And `inferq scaling` shows the decision
    env = {**os.environ, **settings.to_env()}
    out = subprocess.run(
        [sys.executable, "-m", "inferq", "scaling", "--limit", "50"],
        env=env, capture_output=True, text=True, check=True, timeout=60,
    )  # fmt: skip
    shown = json.loads(out.stdout)
    assert any(d["pool"] == "webhooks" and d["backend"] == "dry-run" for d in shown)
