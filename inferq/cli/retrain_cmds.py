"""``inferq retrain NAME [--wait]``: start a training run now, optionally following it."""

from __future__ import annotations

import json
import sys
import time
import uuid
from typing import Any

import click

from inferq.cli.common import db_session, info, load_settings, reports_errors
from inferq.core.settings import Settings

TERMINAL = ("succeeded", "failed")


def start_run(settings: Settings, name: str) -> uuid.UUID:
    """Open a manual run of ``name`` and send it to the training lane."""
    from inferq.core.broker import make_celery, publish
    from inferq.core.messages import TrainRequest
    from inferq.domain.training import request_run

    with db_session(settings) as session:
        run_id = request_run(session, settings, name, trigger="manual", requested_by="inferq cli")
    publish(make_celery(settings), settings, TrainRequest(name, str(run_id), "manual"))
    return run_id


def read_run(settings: Settings, run_id: uuid.UUID) -> dict[str, Any]:
    """The run as the API shows it."""
    from db.training import get_run, run_dict

    with db_session(settings) as session:
        found = get_run(session, run_id)
        assert found is not None
        return run_dict(*found)


def follow(settings: Settings, run_id: uuid.UUID, poll_s: float = 0.5) -> dict[str, Any]:
    """Poll the run with a progress bar on stderr until it ends; returns its last state."""
    from tqdm import tqdm

    with tqdm(total=100, unit="%", desc="training", file=sys.stderr) as bar:
        while True:
            run = read_run(settings, run_id)
            bar.set_postfix_str(str(run["stage"] or run["status"]))
            bar.update(round(run["progress"] * 100) - bar.n)
            if run["status"] in TERMINAL:
                return run
            time.sleep(poll_s)


@click.command()
@click.argument("name")
@click.option("--wait", is_flag=True, help="Follow the run with a progress bar until it ends.")
@reports_errors
def retrain(name: str, wait: bool) -> None:
    """Retrain NAME now on a training worker; prints the run (JSON) on stdout."""
    settings = load_settings()
    run_id = start_run(settings, name)
    info(f"{name}: training run {run_id} queued")
    run = follow(settings, run_id) if wait else read_run(settings, run_id)
    click.echo(json.dumps(run, indent=2))
    if run["status"] == "failed":
        raise SystemExit(1)


COMMANDS = [retrain]
