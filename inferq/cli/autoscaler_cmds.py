"""``inferq autoscaler`` (run the autoscaler) and ``inferq scaling`` (what it decided)."""

from __future__ import annotations

import json

import click

from inferq.cli.common import db_session, load_settings, reports_errors
from inferq.logs import configure

BACKENDS = ["auto", "local", "compose", "kubernetes", "dry-run"]


@click.command()
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default="auto",
    show_default=True,
    help="auto: kubernetes in a pod, compose next to a Docker socket, else local.",
)
@click.option(
    "--lanes", default=None, help="Lanes of the pool scaled (default: INFERQ_WORKER_LANES)."
)
@click.option("--min-workers", type=int, default=1, show_default=True)
@click.option("--max-workers", type=int, default=4, show_default=True)
@click.option(
    "--target-wait",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds within which a backlog should drain (target_queue_wait_s).",
)
@click.option("--poll", type=float, default=5.0, show_default=True, help="Seconds between polls.")
@click.option(
    "--window",
    type=float,
    default=60.0,
    show_default=True,
    help="Seconds over which arrival and service rates are measured.",
)
@click.option(
    "--stabilization",
    type=float,
    default=60.0,
    show_default=True,
    help="Scale down only to the highest need of this many seconds.",
)
@click.option(
    "--cooldown",
    type=float,
    default=30.0,
    show_default=True,
    help="No scale-down within this many seconds of the last change.",
)
@click.option("--max-step", type=int, default=4, show_default=True)
@click.option(
    "--activation",
    type=int,
    default=1,
    show_default=True,
    help="Jobs that must wait before a pool at zero starts a worker.",
)
@click.option("--docker-url", default=None, help="compose: the Docker Engine API (http://).")
@click.option("--compose-project", default=None, help="compose: default, this container's.")
@click.option("--compose-service", default="worker", show_default=True)
@click.option("--k8s-namespace", default=None, help="kubernetes: default, this pod's.")
@click.option("--k8s-deployment", default="inferq-worker", show_default=True)
@click.option(
    "--grace",
    type=int,
    default=60,
    show_default=True,
    help="compose: seconds a stopping worker gets to drain before SIGKILL.",
)
@reports_errors
def autoscaler(backend: str, lanes: str | None, min_workers: int, max_workers: int,
               target_wait: float, poll: float, window: float, stabilization: float,
               cooldown: float, max_step: int, activation: int, docker_url: str | None,
               compose_project: str | None, compose_service: str, k8s_namespace: str | None,
               k8s_deployment: str, grace: int) -> None:  # fmt: skip
    """Scale the workers on queue depth and arrival rate (run exactly one)."""
    from scheduler.autoscaler.policy import Policy
    from scheduler.autoscaler.service import BackendOptions, run_autoscaler

    settings = load_settings(worker_lanes=lanes)
    configure(settings.log_level)
    try:
        policy = Policy(min_workers, max_workers, target_wait, max_step, stabilization,
                        cooldown, activation)  # fmt: skip
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    options = BackendOptions(backend, docker_url, compose_project, compose_service,
                             k8s_namespace, k8s_deployment, grace)  # fmt: skip
    run_autoscaler(settings, policy, options, poll, window)


@click.command()
@click.option("--limit", type=int, default=10, show_default=True)
@reports_errors
def scaling(limit: int) -> None:
    """Recent autoscaler decisions (what GET /v1/scaling shows), as JSON."""
    from db.scaling import recent_decisions

    with db_session(load_settings()) as session:
        click.echo(json.dumps(recent_decisions(session, limit), indent=2))


COMMANDS = [autoscaler, scaling]
