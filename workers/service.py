"""Running a worker process: the Celery worker, its tasks, its heartbeat."""

from __future__ import annotations

import gc
import secrets
import socket
from typing import Any

from celery import signals

from inferq.core.broker import declare_dead_letters, make_celery, queue_name
from inferq.core.settings import Settings
from workers import events as task_events
from workers.context import WorkerContext
from workers.heartbeat import Heartbeat
from workers.liveness import loop_marker
from workers.metrics import start as start_metrics
from workers.tasks import register_all


def run_worker(settings: Settings, name: str | None = None, concurrency: int = 1) -> None:
    """Consume the configured lanes until stopped (SIGTERM: finish running work, then exit).

    One process runs one model replica (``solo`` pool): batching and the device are per
    process, and on a GPU host one worker process per GPU is the intended shape.
    """
    name = name or f"worker-{socket.gethostname()}"
    hostname = name if "@" in name else f"{name}@{socket.gethostname()}"
    # Claims and heartbeats name this incarnation: a restarted worker reusing the name
    # must not keep its predecessor's jobs looking alive to the reconciler.
    identity = f"{hostname}/{secrets.token_hex(3)}"
    app = make_celery(settings)
    holder: dict[str, Any] = {}

    def context() -> WorkerContext:
        if "ctx" not in holder:
            holder["ctx"] = WorkerContext.create(settings, identity, app)
        ctx: WorkerContext = holder["ctx"]
        return ctx

    register_all(app, settings, context)
    app.steps["consumer"].add(loop_marker(context().liveness))
    # Beat before consuming: a job is never claimed by a worker the reconciler thinks dead.
    heartbeat = Heartbeat(context().redis, settings, identity, context().liveness)
    heartbeat.start()
    start_metrics(context(), settings)
    if settings.observability.task_events:
        task_events.connect()

    @signals.worker_shutdown.connect(weak=False)
    def _shutdown(**_: Any) -> None:
        heartbeat.stop()

    if (settings.broker_url or "").startswith(("amqp", "pyamqp")):
        declare_dead_letters(app, settings)
    queues = ",".join(queue_name(settings, lane) for lane in settings.worker.lanes)
    argv = [
        "worker",
        f"--hostname={hostname}",
        f"--queues={queues}",
        "--pool=solo" if concurrency == 1 else f"--concurrency={concurrency}",
        f"--loglevel={settings.log_level}",
        "--without-gossip",
        "--without-mingle",
    ]
    # What the process made to get here (Celery, kombu, SQLAlchemy, torch: about 250,000
    # objects) lives as long as it does. Frozen, a full collection of the cycle collector no
    # longer walks it: one took 140 ms, stalling the batch in hand, and takes 8 ms since
    # (64 clients, the serving worker).
    gc.freeze()
    app.worker_main(argv)
