"""A batch's acks in one round trip (inferq.core.redis_transport), on this run's Redis."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from kombu import Connection, Exchange, Queue

from inferq.core.broker import make_celery
from inferq.core.redis_transport import QoS, Transport
from inferq.core.settings import Settings
from tests.services import wipe_redis


@pytest.fixture
def own(settings: Settings) -> Iterator[Settings]:
    """This run's Redis, a namespace of this test's own."""
    mine = settings.replace(namespace=f"{settings.namespace}ack{uuid.uuid4().hex[:6]}")
    yield mine
    wipe_redis(mine.broker_url or "", mine.namespace)


@dataclasses.dataclass
class Delivered:
    """A channel of the worker's transport, and four messages delivered to it, unacked."""

    channel: Any
    messages: list[Any]

    @property
    def qos(self) -> QoS:
        qos: QoS = self.channel.qos
        return qos


@pytest.fixture
def delivered(own: Settings) -> Iterator[Delivered]:
    prefix = f"{own.namespace}:"
    with Connection(
        own.broker_url, transport=Transport, transport_options={"global_keyprefix": prefix}
    ) as connection:
        chan = connection.channel()
        queue = Queue("acks", Exchange("acks", type="direct"), routing_key="acks")
        producer = connection.Producer(chan)
        for n in range(4):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="acks", declare=[queue])
        yield Delivered(chan, [chan.basic_get("acks", no_ack=False) for _ in range(4)])
        chan.close()


def unacked(own: Settings) -> tuple[int, int]:
    """Messages in kombu's unacked hash and in its index."""
    client = redis.Redis.from_url(own.broker_url or "")
    try:
        return (
            client.hlen(f"{own.namespace}:unacked"),
            client.zcard(f"{own.namespace}:unacked_index"),
        )
    finally:
        client.close()


def ready(own: Settings) -> int:
    """Messages waiting on the queue."""
    client = redis.Redis.from_url(own.broker_url or "")
    try:
        return int(client.llen(f"{own.namespace}:acks"))
    finally:
        client.close()


def test_gathered_acks_reach_redis_together_when_sent(own: Settings, delivered: Delivered) -> None:
    """Catches: each ack sent on its own as before (the hash empties while gathering), or
    gathered acks never sent (the messages would come back after the visibility timeout and
    run again)."""
    qos = delivered.qos
    qos.prefetch_count = 4
    assert unacked(own) == (4, 4)
    assert not qos.can_consume()
    # Given the four messages acked while the channel gathers
    qos.gather_acks()
    for message in delivered.messages:
        message.ack()
    # Then none of them left Redis before the gathered acks were sent
    assert unacked(own) == (4, 4)
    assert qos.gathered() == 4
    # and all of them did when they were, and their prefetch slots are free again
    qos.send_gathered()
    assert unacked(own) == (0, 0)
    assert qos.can_consume()


def test_a_closing_channel_sends_its_gathered_acks_and_gives_back_only_the_rest(
    own: Settings, delivered: Delivered
) -> None:
    """Catches: a warm shutdown (or a lost connection) that gives back messages whose acks
    were gathered but not yet sent: they would run a second time."""
    qos = delivered.qos
    qos.gather_acks()
    delivered.messages[0].ack()
    delivered.messages[1].ack()
    assert ready(own) == 0
    # When the channel gives back what it holds unacked, as kombu does as it closes
    qos.restore_unacked()
    # Then the two acked are gone for good, and only the two others are back on the queue
    assert unacked(own) == (0, 0)
    assert ready(own) == 2


def test_the_worker_consumes_a_redis_broker_through_this_transport(own: Settings) -> None:
    """Catches: the worker's connection built on kombu's own Redis transport, whose acks go
    one round trip each."""
    app = make_celery(own)
    with app.connection_for_read() as connection:
        assert isinstance(connection.transport, Transport)
