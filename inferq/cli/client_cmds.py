"""Client commands: submit a job and read one, through the REST API."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Any

import click

from inferq.cli.common import load_settings, reports_errors
from inferq.client import Client
from inferq.core.errors import ConfigError


def make_client() -> Client:
    """A client for INFERQ_URL and INFERQ_API_KEY, else what ``inferq up`` left in INFERQ_HOME."""
    home = Path(load_settings().home)
    url = os.environ.get("INFERQ_URL")
    if not url and (home / "up.json").exists():
        url = json.loads((home / "up.json").read_text())["url"]
    key = os.environ.get("INFERQ_API_KEY")
    if not key and (home / "dev-api-key").exists():
        key = (home / "dev-api-key").read_text().strip()
    if not url or not key:
        raise ConfigError("set INFERQ_URL and INFERQ_API_KEY (or run `inferq up` here first)")
    return Client(url, key)


def _print(job: dict[str, Any]) -> None:
    click.echo(json.dumps(job, indent=2))


@click.command()
@click.option("--model", required=True)
@click.option("--input", "input_json", required=True, help="The input as JSON, or @file.json.")
@click.option("--wait", is_flag=True, help="Wait for the result.")
@click.option("--timeout", type=float, default=300.0, show_default=True)
@click.option("--lane", default=None)
@click.option("--user", default=None)
@reports_errors
def submit(
    model: str, input_json: str, wait: bool, timeout: float, lane: str | None, user: str | None
) -> None:
    """Submit a job and print it (finished, with --wait)."""
    text = Path(input_json[1:]).read_text() if input_json.startswith("@") else input_json
    try:
        payload = json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--input") from exc
    client = make_client()
    # A key of its own makes the submit safe to retry: a lost answer never doubles the job.
    job = client.submit(
        model,
        payload,
        wait=min(timeout, 10) if wait else 0,
        lane=lane,
        user=user,
        idempotency_key=uuid.uuid4().hex,
    )
    if wait and job["status"] not in ("succeeded", "failed", "canceled"):
        job = client.wait(job["id"], timeout_s=timeout)
    _print(job)


@click.command()
@click.argument("job_id")
@click.option("--wait", type=float, default=0, help="Long-poll up to this many seconds.")
@reports_errors
def job(job_id: str, wait: float) -> None:
    """Print a job."""
    _print(make_client().get(job_id, wait=wait))


@click.command()
@click.argument("job_id")
@reports_errors
def cancel(job_id: str) -> None:
    """Cancel a job."""
    _print(make_client().cancel(job_id))


COMMANDS = [submit, job, cancel]
