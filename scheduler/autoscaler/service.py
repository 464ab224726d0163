"""``inferq autoscaler``: build the observer, the backend and the loop, run until SIGTERM."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from prometheus_client import start_http_server

from db.engine import make_engine, make_session_factory
from inferq.core import connections
from inferq.core.errors import ConfigError
from inferq.core.settings import AutoscalerSettings, Settings
from scheduler.autoscaler.loop import Autoscaler
from scheduler.autoscaler.observe import Observer
from scheduler.autoscaler.policy import Policy
from scheduler.backends import Backend

log = logging.getLogger(__name__)

BACKENDS = ("auto", "local", "compose", "kubernetes", "dry-run")
DOCKER_SOCKET = Path("/var/run/docker.sock")


@dataclasses.dataclass(frozen=True)
class BackendOptions:
    """Where each backend finds its workers."""

    kind: str = "auto"
    docker_url: str | None = None
    compose_project: str | None = None
    compose_service: str = "worker"
    k8s_namespace: str | None = None
    k8s_deployment: str = "inferq-worker"
    grace_s: int = 60
    #: local: a Prometheus file_sd file (``inferq up``'s) listing each worker's metrics port.
    metrics_targets: Path | None = None

    @classmethod
    def from_settings(cls, scaling: AutoscalerSettings) -> BackendOptions:
        """The backend the ``INFERQ_AUTOSCALER_*`` settings describe (empty: the default)."""
        return cls(
            kind=scaling.autoscaler_backend,
            docker_url=scaling.autoscaler_docker_url or None,
            compose_project=scaling.autoscaler_compose_project or None,
            compose_service=scaling.autoscaler_compose_service,
            k8s_namespace=scaling.autoscaler_k8s_namespace or None,
            k8s_deployment=scaling.autoscaler_k8s_deployment,
            grace_s=scaling.autoscaler_grace_s,
        )


def resolve_kind(kind: str) -> str:
    """``auto``: kubernetes inside a pod, compose next to a Docker socket, else local."""
    if kind != "auto":
        return kind
    if os.environ.get("KUBERNETES_SERVICE_HOST"):
        return "kubernetes"
    return "compose" if DOCKER_SOCKET.exists() else "local"


def make_backend(settings: Settings, options: BackendOptions, lanes: str) -> Backend:
    """The backend ``options`` name."""
    kind = resolve_kind(options.kind)
    if kind == "local":
        from scheduler.backends.local import LocalBackend

        prefix = "auto-" + lanes.replace(",", "-")  # one autoscaler per pool: distinct names
        logs = settings.home / "logs"
        return LocalBackend(settings, logs, prefix, lanes, metrics_targets=options.metrics_targets)
    if kind == "dry-run":
        from scheduler.backends.dry_run import DryRunBackend

        return DryRunBackend()
    if kind == "compose":
        from scheduler.backends.compose import ComposeBackend

        url = options.docker_url or os.environ.get("DOCKER_HOST") or f"unix://{DOCKER_SOCKET}"
        url = url.replace("tcp://", "http://")
        project = options.compose_project or _own_compose_project(url)
        return ComposeBackend(url, project, options.compose_service, options.grace_s)
    if kind == "kubernetes":
        from scheduler.backends.kubernetes import KubernetesBackend

        return KubernetesBackend.in_cluster(options.k8s_namespace, options.k8s_deployment)
    raise ConfigError(f"unknown backend {kind!r}; backends: {BACKENDS}")


def _own_compose_project(url: str) -> str:
    """The compose project of the container this runs in (its hostname is its id)."""
    from scheduler.backends.compose import PROJECT, ComposeBackend, ComposeError

    try:
        me = ComposeBackend(url, "").inspect(socket.gethostname())
        return str(me["Config"]["Labels"][PROJECT])
    except (ComposeError, KeyError, OSError) as exc:
        raise ConfigError(
            f"cannot tell the compose project ({exc}): pass --compose-project"
        ) from exc


def run_autoscaler(
    settings: Settings,
    policy: Policy,
    options: BackendOptions,
    poll_s: float,
    window_s: float,
    **_: Any,
) -> None:
    """Scale the workers of ``settings.worker.worker_lanes`` until SIGTERM or SIGINT."""
    pool = connections.pool(settings, "autoscaler")
    engine = make_engine(
        settings.require_database_url(),
        pool_size=pool.size,
        max_overflow=pool.overflow,
        application_name="inferq-autoscaler",
    )
    sessions = make_session_factory(engine)
    observer = Observer(settings, settings.worker.lanes, sessions, window_s)
    backend = make_backend(settings, options, settings.worker.worker_lanes)
    scaler = Autoscaler(policy, observer, backend, sessions, poll_s)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    observability = settings.observability
    if observability.metrics_port:
        start_http_server(observability.metrics_port, observability.metrics_host)
    log.info("autoscaling %s with the %s backend: %s", scaler.pool, backend.name, policy)
    try:
        scaler.run(stop)
    finally:
        backend.close()
        observer.close()
        engine.dispose()
