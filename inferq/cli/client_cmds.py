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

WHERE = (
    "The API's URL and key come from INFERQ_URL and INFERQ_API_KEY; unset, from the `inferq "
    "up` running from INFERQ_HOME (default ./var): its up.json and dev-api-key."
)


def make_client() -> Client:
    """A client for INFERQ_URL and INFERQ_API_KEY, else what ``inferq up`` left in INFERQ_HOME."""
    from inferq.local.stack import StackPaths, read_running

    paths = StackPaths(Path(load_settings().home).resolve())
    running = read_running(paths)
    url = os.environ.get("INFERQ_URL") or (running or {}).get("url")
    key = os.environ.get("INFERQ_API_KEY")
    if not key and running and paths.api_key.exists():
        key = paths.api_key.read_text().strip()
    if not url or not key:
        unset = " and ".join(n for n, v in (("INFERQ_URL", url), ("INFERQ_API_KEY", key)) if not v)
        raise ConfigError(
            f"{unset} not set, and no `inferq up` runs from {paths.home} (INFERQ_HOME; looked "
            f"for {paths.up_json}): start one there, point INFERQ_HOME at the directory it "
            "runs from, or set INFERQ_URL and INFERQ_API_KEY"
        )
    return Client(url, key)


def render(value: Any, level: int = 0) -> str:
    """JSON indented by object, with lists of plain values (probabilities, pixels) kept on one
    line: a job reads in a screenful."""
    pad = "  " * level
    if isinstance(value, dict) and value:
        items = [f"{pad}  {json.dumps(k)}: {render(v, level + 1)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{pad}}}"
    if isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value):
        items = [f"{pad}  {render(v, level + 1)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{pad}]"
    return json.dumps(value)


def _print(job: dict[str, Any]) -> None:
    click.echo(render(job))


def example_input(client: Client, model: str) -> Any:
    """The first of the model's own examples (its input schema's JSON Schema ``examples``)."""
    found = next((m for m in client.models() if m.get("name") == model), None)
    if found is None:
        names = ", ".join(sorted(m["name"] for m in client.models())) or "none"
        raise ConfigError(f"there is no model named {model!r} (models: {names})")
    examples = (found.get("input_schema") or {}).get("examples") or []
    if not examples:
        raise ConfigError(f"model {model!r} has no example input; give one with --input")
    return examples[0]


@click.command(epilog=WHERE)
@click.option("--model", required=True, help="The model's name (`inferq models list`).")
@click.option("--input", "input_json", default=None, help="The input as JSON, or @file.json.")
@click.option(
    "--example", is_flag=True, help="Send the model's own example input instead of --input."
)
@click.option("--wait", is_flag=True, help="Wait for the result (else print the queued job).")
@click.option(
    "--timeout",
    type=float,
    default=300.0,
    show_default=True,
    help="With --wait: give up waiting after this many seconds (the job keeps its place).",
)
@click.option(
    "--lane",
    default=None,
    help="The queue the job goes to: online (the default) or batch (offline, lower priority).",
)
@click.option(
    "--user",
    default=None,
    help="Your end user's id: keeps them on one arm of a running A/B experiment.",
)
@reports_errors
def submit(
    model: str,
    input_json: str | None,
    example: bool,
    wait: bool,
    timeout: float,
    lane: str | None,
    user: str | None,
) -> None:
    """Submit a job and print it (finished, with --wait)."""
    if (input_json is None) == (not example):
        raise click.UsageError("give one of --input or --example")
    client = make_client()
    payload = example_input(client, model) if example else _read_input(input_json or "")
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


def _read_input(input_json: str) -> Any:
    text = Path(input_json[1:]).read_text() if input_json.startswith("@") else input_json
    try:
        return json.loads(text)
    except ValueError as exc:
        raise click.BadParameter(f"not JSON: {exc}", param_hint="--input") from exc


@click.command(epilog=WHERE)
@click.argument("job_id")
@click.option("--wait", type=float, default=0, help="Long-poll up to this many seconds.")
@reports_errors
def job(job_id: str, wait: float) -> None:
    """Print a job."""
    _print(make_client().get(job_id, wait=wait))


@click.command(epilog=WHERE)
@click.argument("job_id")
@reports_errors
def cancel(job_id: str) -> None:
    """Cancel a job."""
    _print(make_client().cancel(job_id))


COMMANDS = [submit, job, cancel]
