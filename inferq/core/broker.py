"""Queue names and the Celery app factory shared by the API, workers and beat."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from kombu import Exchange, Queue
from redis.backoff import ConstantBackoff
from redis.retry import Retry

from inferq.core.messages import PREDICT_TASK, RECONCILE_TASK, TaskMessage
from inferq.core.settings import LANES, Settings

#: How every message is published: a few quick retries, then the caller decides (the API
#: marks the job unpublished for the reconciler; a worker leaves it to the reconciler too).
#: The app carries it too, for the sends Celery makes itself: beat's schedule and a task's
#: own ``self.retry``.
RETRY_POLICY = {"max_retries": 3, "interval_start": 0, "interval_step": 0.2, "interval_max": 0.5}


def queue_name(settings: Settings, lane: str) -> str:
    """The broker queue of ``lane`` in this deployment's namespace."""
    return f"{settings.namespace}.{lane}"


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured for inferq; connects to nothing until used."""
    app = Celery(settings.namespace, set_as_current=False)
    exchange = Exchange(settings.namespace, type="direct", durable=True)
    broker_url = settings.broker_url or ""
    amqp = broker_url.startswith(("amqp://", "amqps://", "pyamqp://"))
    queues = [
        Queue(
            queue_name(settings, lane),
            exchange,
            routing_key=lane,
            durable=True,
            queue_arguments=quorum_arguments(settings) if amqp else None,
        )
        for lane in LANES
    ]
    transport_options: dict[str, object] = {}
    if amqp:
        # Publisher confirms: a publish returns only once RabbitMQ has the message.
        transport_options = {"confirm_publish": True}
    if broker_url.startswith(("redis://", "rediss://")):
        transport_options = {
            # See Settings.visibility_timeout_s. Claims are guarded, so an early
            # redelivery wastes a little work and never runs a job twice.
            "visibility_timeout": settings.worker.visibility_timeout_s,
            # Sweep for messages of dead workers every visibility/4 seconds instead of
            # kombu's default 100 s, so a killed worker's prefetched jobs come back soon.
            "unacked_restore_interval": max(1, settings.worker.visibility_timeout_s // 4),
            "unacked_restore_throttle": 1,
            "global_keyprefix": f"{settings.namespace}:",
            # Bounded publish: the API never hangs on a dead Redis.
            "socket_timeout": settings.api.publish_timeout_s,
            "socket_connect_timeout": settings.api.publish_timeout_s,
        }
    app.conf.update(
        broker_url=settings.broker_url,
        # Redis: kombu's transport with a batch's acks in one round trip.
        broker_transport=(
            "inferq.core.redis_transport:Transport"
            if broker_url.startswith(("redis://", "rediss://"))
            else None
        ),
        broker_transport_options=transport_options,
        broker_connection_timeout=settings.api.publish_timeout_s,
        broker_connection_retry_on_startup=True,
        broker_heartbeat=10,
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_backend=None,
        task_ignore_result=True,
        # The one retry policy, also for what Celery sends itself (beat, ``self.retry``).
        task_publish_retry=True,
        task_publish_retry_policy=RETRY_POLICY,
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
        # One worker process buffers up to this many messages: enough to fill a batch. A
        # batch-lane message is a batch already: a worker of that lane alone holds the one it
        # runs and the next, and leaves the rest to the lane's other workers.
        worker_prefetch_multiplier=(
            2
            if settings.worker.lanes == ("batch",)
            else max(settings.worker.worker_prefetch, settings.worker.max_batch_size)
        ),
        # When the broker connection drops, messages being worked on go back to the queue
        # (their acks can no longer be delivered); cancel the batch rather than finish work
        # whose ack would be lost. Results are guarded, so a batch that did finish and is run
        # again changes nothing.
        worker_cancel_long_running_tasks_on_connection_loss=True,
        # Scale-down and deploys send SIGTERM: stop consuming, finish the running batch, then
        # exit; buffered messages are returned to the broker as the channel closes.
        worker_soft_shutdown_timeout=10.0,
        worker_hijack_root_logger=False,
        worker_enable_remote_control=False,
        # Flower and `celery events` read these (see inferq.celery_tools for Flower's app).
        worker_send_task_events=settings.observability.task_events,
        task_send_sent_event=settings.observability.task_events,
        control_exchange=f"{settings.namespace}.control",
        event_exchange=f"{settings.namespace}.events",
        timezone="UTC",
        enable_utc=True,
    )
    return app


def dead_letter_queue(settings: Settings) -> Queue:
    """Where RabbitMQ puts messages redelivered too often (kept for inspection, never run)."""
    dead = Exchange(f"{settings.namespace}.dead", type="fanout", durable=True)
    return Queue(f"{settings.namespace}.dead", dead, durable=True)


def quorum_arguments(settings: Settings) -> dict[str, object]:
    """RabbitMQ queue arguments: replicated quorum queues with a delivery limit.

    A message that keeps killing its consumer is dead-lettered after a few redeliveries
    (the job itself fails cleanly earlier, when its attempts run out). Consumers ack within
    a batch, far below RabbitMQ's ``consumer_timeout`` (30 min by default).
    """
    return {
        "x-queue-type": "quorum",
        "x-delivery-limit": settings.worker.max_attempts + 2,
        "x-dead-letter-exchange": f"{settings.namespace}.dead",
    }


def declare_dead_letters(app: Celery, settings: Settings) -> None:
    """Declare the dead-letter exchange and queue (RabbitMQ only; idempotent)."""
    with app.connection_for_write() as connection:
        dead_letter_queue(settings)(connection.default_channel).declare()


def route(settings: Settings, lane: str) -> dict[str, str]:
    """Where a message for ``lane`` goes: its queue and routing key."""
    return {"queue": queue_name(settings, lane), "routing_key": lane}


def publish(app: Celery, settings: Settings, message: TaskMessage) -> None:
    """Send ``message`` to its lane, retrying for a bounded time (see :data:`RETRY_POLICY`)."""
    app.send_task(
        message.task,
        args=message.to_args(),
        retry=True,
        retry_policy=RETRY_POLICY,
        **route(settings, message.lane),
    )


def lane_publisher(app: Celery, settings: Settings) -> Callable[[TaskMessage], None]:
    """How a process that publishes on every request sends its messages: straight to the
    list on a Redis broker (:class:`RedisListPublisher`), through Celery otherwise, and also
    when Celery's task events are on (``task-sent`` is Celery's to send, for Flower)."""
    redis_broker = (settings.broker_url or "").startswith(("redis://", "rediss://"))
    if redis_broker and not settings.observability.task_events:
        return RedisListPublisher(app, settings).publish
    return lambda message: publish(app, settings, message)


class RedisListPublisher:
    """Publishes task messages to a Redis broker with one ``LPUSH`` each.

    Celery's ``send_task`` cost 0.43 ms of CPU a publish in a loop, against 0.09 ms for the
    ``LPUSH`` it ends in: routing, copying and binding queue objects, and kombu's producer
    around a transport that only appends to a list. Here the message is Celery's own (its
    protocol-2 headers and body, from ``app.amqp.as_task_v2``), encoded as kombu's Redis
    transport encodes it, and pushed where that transport would push it: the lane's queue
    (the default exchange routes by queue name), its key prefixed as the app's are, at the
    default priority. Retries are bounded as :data:`RETRY_POLICY` bounds Celery's.

    ``tests/integration/test_broker_publish.py`` holds it to what ``send_task`` writes.
    """

    def __init__(self, app: Celery, settings: Settings) -> None:
        self._app = app
        self._settings = settings
        options = app.conf.broker_transport_options  # make_celery's, for a Redis broker
        self._prefix = options["global_keyprefix"]
        self._client = redis.Redis.from_url(
            settings.broker_url or "",
            socket_timeout=options["socket_timeout"],
            socket_connect_timeout=options["socket_connect_timeout"],
            retry=Retry(
                ConstantBackoff(float(RETRY_POLICY["interval_step"])),
                int(RETRY_POLICY["max_retries"]),
            ),
        )

    def message(self, message: TaskMessage, task_id: str | None = None) -> dict[str, Any]:
        """What :meth:`publish` pushes for ``message``, as the transport's JSON object."""
        task_id = task_id or str(uuid.uuid4())
        queue = queue_name(self._settings, message.lane)
        sent = self._app.amqp.as_task_v2(
            task_id, message.task, args=message.to_args(), reply_to=self._app.thread_oid
        )
        body = json.dumps(sent.body).encode("utf-8")
        properties = {
            **sent.properties,
            "delivery_mode": 2,  # persistent, as the app's durable queues have it
            "delivery_info": {"exchange": "", "routing_key": queue},
            "priority": 0,
            "body_encoding": "base64",
            "delivery_tag": str(uuid.uuid4()),
        }
        return {
            "body": base64.b64encode(body).decode("ascii"),
            "content-encoding": "utf-8",
            "content-type": "application/json",
            "headers": sent.headers,
            "properties": properties,
        }

    def publish(self, message: TaskMessage) -> None:
        """Push ``message`` onto its lane's queue; raise when Redis did not take it."""
        key = self._prefix + queue_name(self._settings, message.lane)
        self._client.lpush(key, json.dumps(self.message(message)))
