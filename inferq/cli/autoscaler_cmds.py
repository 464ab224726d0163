"""``inferq autoscaler`` (run the autoscaler) and ``inferq scaling`` (what it decided)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import click

from inferq.cli.common import db_session, info, load_settings, reports_errors
from inferq.cli.service_cmds import METRICS_PORT_HELP
from inferq.core.instance import check_at_start
from inferq.core.logs import configure

BACKENDS = ["auto", "local", "compose", "kubernetes", "dry-run"]


@click.command()
@click.option(
    "--backend",
    type=click.Choice(BACKENDS),
    default=None,
    help="auto: kubernetes in a pod, compose next to a Docker socket, else local.",
)
@click.option("--lanes", default=None, help="Lanes of the pool scaled (INFERQ_WORKER_LANES).")
@click.option("--min-workers", type=int, default=None)
@click.option("--max-workers", type=int, default=None)
@click.option("--target-wait", type=float, default=None, help="Seconds to drain a backlog.")
@click.option("--poll", type=float, default=None, help="Seconds between polls.")
@click.option("--window", type=float, default=None, help="Seconds rates are measured over.")
@click.option(
    "--stabilization",
    type=float,
    default=None,
    help="Seconds of need a scale-down looks back.",
)
@click.option(
    "--cooldown", type=float, default=None, help="Seconds without scale-down after a change."
)
@click.option("--max-step", type=int, default=None, help="Most workers one change adds or removes.")
@click.option(
    "--activation",
    type=int,
    default=None,
    help="Jobs waiting that wake a pool at zero.",
)
@click.option("--docker-url", default=None, help="compose: the Docker Engine API (http://).")
@click.option("--compose-project", default=None, help="compose: default, this container's.")
@click.option("--compose-service", default=None, help="compose: the service scaled.")
@click.option("--k8s-namespace", default=None, help="kubernetes: default, this pod's.")
@click.option("--k8s-deployment", default=None, help="kubernetes: the Deployment scaled.")
@click.option("--grace", type=int, default=None, help="compose: seconds to drain before SIGKILL.")
@click.option("--metrics-port", type=int, default=None, help=METRICS_PORT_HELP)
@click.option(
    "--metrics-targets",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="local: give each worker a metrics port and list them in this Prometheus file_sd "
    "file (inferq up passes its INFERQ_HOME/prometheus-targets.json).",
)
@reports_errors
def autoscaler(backend: str | None, lanes: str | None, min_workers: int | None,
               max_workers: int | None, target_wait: float | None, poll: float | None,
               window: float | None, stabilization: float | None, cooldown: float | None,
               max_step: int | None, activation: int | None, docker_url: str | None,
               compose_project: str | None, compose_service: str | None,
               k8s_namespace: str | None, k8s_deployment: str | None,
               grace: int | None, metrics_port: int | None,
               metrics_targets: Path | None) -> None:  # fmt: skip
    """Scale the workers on queue depth and arrival rate (run exactly one).

    Every option defaults to its INFERQ_AUTOSCALER_* setting (README: Settings); a flag
    given here overrides it.
    """
    from scheduler.autoscaler.policy import Policy
    from scheduler.autoscaler.service import BackendOptions, run_autoscaler

    settings = load_settings(
        worker_lanes=lanes, autoscaler_backend=backend, autoscaler_min_workers=min_workers,
        autoscaler_max_workers=max_workers, autoscaler_target_wait_s=target_wait,
        autoscaler_poll_s=poll, autoscaler_window_s=window,
        autoscaler_stabilization_s=stabilization, autoscaler_cooldown_s=cooldown,
        autoscaler_max_step=max_step, autoscaler_activation=activation,
        autoscaler_docker_url=docker_url, autoscaler_compose_project=compose_project,
        autoscaler_compose_service=compose_service, autoscaler_k8s_namespace=k8s_namespace,
        autoscaler_k8s_deployment=k8s_deployment, autoscaler_grace_s=grace,
        metrics_port=metrics_port,
    )  # fmt: skip
    configure(settings.log_level)
    check_at_start(settings)  # never a Redis of another stack
    try:
        policy = Policy.from_settings(settings.autoscaler)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    scaling = settings.autoscaler
    run_autoscaler(
        settings,
        policy,
        dataclasses.replace(BackendOptions.from_settings(scaling), metrics_targets=metrics_targets),
        scaling.autoscaler_poll_s,
        scaling.autoscaler_window_s,
    )


@click.command()
@click.option("--limit", type=int, default=10, show_default=True)
@reports_errors
def scaling(limit: int) -> None:
    """Recent autoscaler decisions (what GET /v1/scaling shows), as JSON."""
    from db.scaling import recent_decisions

    with db_session(load_settings()) as session:
        decisions = recent_decisions(session, limit)
    click.echo(json.dumps(decisions, indent=2))
    if not decisions:
        info(
            "no autoscaler has decided anything here: none runs, so the worker count is fixed "
            "(`inferq up --autoscale MIN:MAX`, or `inferq autoscaler`, scales it)"
        )


COMMANDS = [autoscaler, scaling]
