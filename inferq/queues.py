"""Queue names and the Celery app factory shared by the API, workers and beat."""

from __future__ import annotations

from celery import Celery
from kombu import Exchange, Queue

from inferq.messages import PREDICT_TASK, RECONCILE_TASK
from inferq.settings import LANES, Settings


def queue_name(settings: Settings, lane: str) -> str:
    """The broker queue of ``lane`` in this deployment's namespace."""
    return f"{settings.namespace}.{lane}"


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for inferq; connects to nothing until used."""
    app = Celery(settings.namespace, set_as_current=False)
    exchange = Exchange(settings.namespace, type="direct", durable=True)
    queues = [
        Queue(queue_name(settings, lane), exchange, routing_key=lane, durable=True)
        for lane in LANES
    ]
    transport_options: dict[str, object] = {}
    broker_url = settings.broker_url or ""
    if broker_url.startswith(("redis://", "rediss://")):
        transport_options = {
            # See Settings.visibility_timeout_s. Claims are guarded, so an early
            # redelivery wastes a little work and never runs a job twice.
            "visibility_timeout": settings.visibility_timeout_s,
            # Sweep for messages of dead workers every visibility/4 seconds instead of
            # kombu's default 100 s, so a killed worker's prefetched jobs come back soon.
            "unacked_restore_interval": max(1, settings.visibility_timeout_s // 4),
            "unacked_restore_throttle": 1,
            "global_keyprefix": f"{settings.namespace}:",
            # Bounded publish: the API never hangs on a dead Redis.
            "socket_timeout": settings.publish_timeout_s,
            "socket_connect_timeout": settings.publish_timeout_s,
        }
    app.conf.update(
        broker_url=settings.broker_url,
        broker_transport_options=transport_options,
        broker_connection_timeout=settings.publish_timeout_s,
        broker_connection_retry_on_startup=True,
        broker_heartbeat=10,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        task_queues=queues,
        task_default_queue=queue_name(settings, "online"),
        task_default_exchange=settings.namespace,
        task_default_routing_key="online",
        task_routes={
            PREDICT_TASK: {"queue": queue_name(settings, "online"), "routing_key": "online"},
            RECONCILE_TASK: {
                "queue": queue_name(settings, "maintenance"),
                "routing_key": "maintenance",
            },
        },
        # A message is acked only after its jobs' results are committed, and goes back to
        # the queue when the process running it dies.
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        # One worker process buffers up to this many messages: enough to fill a batch.
        worker_prefetch_multiplier=max(settings.worker_prefetch, settings.max_batch_size),
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        worker_send_task_events=False,
        control_exchange=f"{settings.namespace}.control",
        event_exchange=f"{settings.namespace}.events",
        timezone="UTC",
        enable_utc=True,
    )
    return app


def publish_predict(app: Celery, settings: Settings, job_ids: list[str], lane: str) -> None:
    """Publish one predict message for ``job_ids`` on ``lane``, retrying for a bounded time."""
    app.send_task(
        PREDICT_TASK,
        args=[job_ids],
        queue=queue_name(settings, lane),
        routing_key=lane,
        retry=True,
        retry_policy={
            "max_retries": 3,
            "interval_start": 0,
            "interval_step": 0.2,
            "interval_max": 0.5,
        },
    )
