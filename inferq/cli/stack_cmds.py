"""``inferq up`` and ``inferq down``: the whole system on this machine, in the foreground."""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

import click

from inferq.cli.common import info, load_settings, reports_errors

if TYPE_CHECKING:
    from inferq.local.stack import StackPaths


@click.command()
@click.option("--port", type=int, default=None, help="Public port of the API (INFERQ_PORT, 8080).")
@click.option(
    "--api-nodes",
    type=click.IntRange(min=1),
    default=None,
    help="API nodes behind nginx (INFERQ_API_NODES, 1).",
)
@click.option(
    "--workers", type=click.IntRange(min=0), default=None, help="Workers (INFERQ_WORKERS, 1)."
)
@click.option(
    "--batch-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Workers of the batch lane alone (INFERQ_BATCH_WORKERS, 1).",
)
@click.option(
    "--autoscale",
    metavar="MIN:MAX",
    default=None,
    help="Scale workers between MIN and MAX on queue depth instead of --workers "
    "(INFERQ_AUTOSCALE).",
)
@reports_errors
def up(
    port: int | None,
    api_nodes: int | None,
    workers: int | None,
    batch_workers: int | None,
    autoscale: str | None,
) -> None:
    """Run inferq here until Ctrl-C or `inferq down`.

    nginx, when installed, listens on the public port in front of the API nodes; without it
    one node serves that port directly. Without INFERQ_DATABASE_URL / INFERQ_BROKER_URL it
    starts an embedded PostgreSQL and Redis under INFERQ_HOME (default ./var), which keep
    their data between runs.
    """
    from inferq.local import stack

    settings = load_settings(
        port=port,
        api_nodes=api_nodes,
        workers=workers,
        batch_workers=batch_workers,
        autoscale=autoscale,
    )
    paths = stack.StackPaths(settings.home.resolve())
    url = f"http://127.0.0.1:{settings.local.port}"
    budget = stack.connection_budget(settings)
    program = stack.example_program(settings)
    sys.exit(stack.run(settings, on_ready=lambda: _say_ready(url, paths, budget, program)))


def _say_ready(url: str, paths: StackPaths, budget: str, program: str) -> None:
    """The banner: where the stack is, a command to try, and how to look after it
    (``program``: one that supervisord runs, as supervisorctl names it)."""
    info(f"\ninferq is up at {url}")
    info(f"  API key:  {paths.api_key}")
    info("  try:      inferq submit --model digits --example --wait")
    info(f"  logs:     {paths.logs}/")
    info(f"  status:   supervisorctl -c {paths.conf} status   (then e.g. restart {program})")
    if paths.nginx_paths.conf.exists():
        info(
            f"  nginx:    {paths.nginx_paths.conf} (JSON access log {paths.nginx_paths.access_log})"
        )
    info(f"  Postgres: {budget}")
    info("  stop:     Ctrl-C here, or `inferq down`\n")


@click.command()
@reports_errors
def down() -> None:
    """Stop the `inferq up` that runs from INFERQ_HOME, and wait until it has stopped."""
    from inferq.local import stack

    paths = stack.StackPaths(load_settings().home.resolve())
    running = stack.read_running(paths)
    if running is None:
        info(f"inferq is not running from {paths.home}")
        return
    info(f"stopping inferq at {running['url']} (up to {stack.DOWN_TIMEOUT_S:.0f} s)")
    stack.down(paths.home)
    info("inferq has stopped")


COMMANDS = [up, down]
