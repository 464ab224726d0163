"""Commands that run one service process in the foreground: api, worker, beat."""

from __future__ import annotations

import click

from inferq.cli.common import load_settings, reports_errors
from inferq.core.instance import check_at_start
from inferq.core.logs import configure

METRICS_PORT_HELP = "Serve Prometheus /metrics on this port; 0: off (default: INFERQ_METRICS_PORT)."


@click.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=int, default=None, help="Default: INFERQ_PORT (8080).")
@reports_errors
def api(host: str, port: int | None) -> None:
    """Run an API node (gunicorn, gevent workers)."""
    from api.server import serve

    settings = load_settings()
    configure(settings.log_level, flush_every_s=settings.log_flush_s)
    check_at_start(settings)  # never a Redis of another stack
    serve(settings, host, port or settings.local.port)


@click.command()
@click.option("--name", default=None, help="Worker name (unique per host).")
@click.option("--lanes", default=None, help="Comma-separated lanes (default: INFERQ_WORKER_LANES).")
@click.option("--device", default=None, help="auto, cpu, cuda or cuda:N (default: INFERQ_DEVICE).")
@click.option("--metrics-port", type=int, default=None, help=METRICS_PORT_HELP)
@reports_errors
def worker(
    name: str | None, lanes: str | None, device: str | None, metrics_port: int | None
) -> None:
    """Run a worker process: one model replica consuming the lanes (one per GPU)."""
    from workers.service import run_worker

    settings = load_settings(worker_lanes=lanes, device=device, metrics_port=metrics_port)
    configure(settings.log_level)
    check_at_start(settings)  # never a Redis of another stack
    run_worker(settings, name)


@click.command()
@click.option("--metrics-port", type=int, default=None, help=METRICS_PORT_HELP)
@reports_errors
def beat(metrics_port: int | None) -> None:
    """Run the scheduler: Celery beat and the reconciler (run exactly one)."""
    from scheduler.service import run_scheduler

    settings = load_settings(metrics_port=metrics_port)
    configure(settings.log_level)
    check_at_start(settings)  # never a Redis of another stack
    run_scheduler(settings)


COMMANDS = [api, worker, beat]
