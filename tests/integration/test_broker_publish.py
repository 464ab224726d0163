"""The API's publish straight to a Redis broker's list (inferq.core.broker.RedisListPublisher)
writes what Celery's ``send_task`` writes, where it writes it, and a Celery consumer takes it."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection

from inferq.core.broker import (
    RedisListPublisher,
    lane_publisher,
    make_celery,
    publish,
    queue_name,
)
from inferq.core.messages import PREDICT_TASK, PredictRequest
from inferq.core.settings import Settings
from tests.services import wipe_redis


@pytest.fixture
def own(settings: Settings) -> Iterator[Settings]:
    """This run's Redis, a namespace of this test's own (its queues start empty)."""
    mine = settings.replace(namespace=f"{settings.namespace}pub{uuid.uuid4().hex[:6]}")
    yield mine
    wipe_redis(mine.broker_url or "", mine.namespace)


def pushed(settings: Settings, lane: str) -> list[dict[str, Any]]:
    """The messages waiting on ``lane``'s list, oldest first (read, not consumed)."""
    client = redis.Redis.from_url(settings.broker_url or "")
    key = f"{settings.namespace}:{queue_name(settings, lane)}"
    try:
        return [json.loads(raw) for raw in reversed(client.lrange(key, 0, -1))]
    finally:
        client.close()


def test_the_message_is_the_one_send_task_writes_on_the_same_list(own: Settings) -> None:
    """Catches: a message that differs from Celery's in any header, property or body byte
    (a worker may read any of them), or one pushed to another list than the lane's."""
    app = make_celery(own)
    request = PredictRequest(("01a2510d-c74f-7fc9-9e5f-ac6666868d65", "x" * 40), "batch")
    # Given a message sent by Celery, and the same by the direct publisher
    publish(app, own, request)
    RedisListPublisher(app, own).publish(request)

    # Then both are on the lane's list, and nothing went anywhere else
    celerys, ours = pushed(own, "batch")
    assert pushed(own, "online") == []
    # and they are equal but for what is new on every message: the task id, the delivery tag
    task_id = celerys["headers"]["id"]
    assert celerys["properties"]["correlation_id"] == task_id
    ours_as_celerys = RedisListPublisher(app, own).message(request, task_id)
    ours_as_celerys["properties"]["delivery_tag"] = celerys["properties"]["delivery_tag"]
    assert ours_as_celerys == celerys
    assert ours["headers"]["id"] != task_id
    assert ours["properties"]["delivery_tag"] != celerys["properties"]["delivery_tag"]
    app.close()


def test_a_celery_consumer_takes_the_message_with_its_task_and_args(own: Settings) -> None:
    """Catches: a message kombu cannot decode, or whose task name or arguments come out
    other than those sent."""
    app = make_celery(own)
    RedisListPublisher(app, own).publish(PredictRequest(("a", "b"), "online"))
    received: list[tuple[Any, dict[str, Any]]] = []

    def take(body: Any, message: Any) -> None:
        received.append((body, message.headers))
        message.ack()

    queue = next(q for q in app.conf.task_queues if q.name == queue_name(own, "online"))
    options = app.conf.broker_transport_options
    with (
        Connection(own.broker_url, transport_options=options) as conn,
        conn.Consumer(queue, accept=["json"]) as consumer,
    ):
        consumer.register_callback(take)
        conn.drain_events(timeout=5)
    ((body, headers),) = received
    assert headers["task"] == PREDICT_TASK
    assert body[0] == [["a", "b"]] and body[1] == {}
    app.close()


def test_only_a_redis_broker_without_task_events_gets_the_direct_publisher(
    own: Settings,
) -> None:
    """Catches: RabbitMQ's publishes (confirms, quorum queues) sent as Redis pushes, and
    publishes without Celery's ``task-sent`` event when task events are on (Flower)."""
    app = make_celery(own)
    direct = lane_publisher(app, own)
    assert getattr(direct, "__self__", None).__class__ is RedisListPublisher
    amqp = own.replace(broker_url="amqp://guest:guest@127.0.0.1:5672//")
    through_celery = lane_publisher(make_celery(amqp), amqp)
    assert not isinstance(getattr(through_celery, "__self__", None), RedisListPublisher)
    flower = own.replace(task_events=True)
    with_events = lane_publisher(make_celery(flower), flower)
    assert not isinstance(getattr(with_events, "__self__", None), RedisListPublisher)
    app.close()


def test_a_publish_to_a_redis_that_is_gone_raises_within_its_retries(own: Settings) -> None:
    """Catches: a publish that hangs on a dead Redis (the API must mark the job unpublished
    and answer) or one that reports success without the message."""
    dead = own.replace(broker_url="redis://127.0.0.1:1/0", publish_timeout_s=0.2)
    publisher = RedisListPublisher(make_celery(dead), dead)
    with pytest.raises(redis.ConnectionError):
        publisher.publish(PredictRequest(("a",), "online"))
