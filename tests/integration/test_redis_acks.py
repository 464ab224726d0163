"""A batch's acks in one round trip (inferq.core.redis_transport), on this run's Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from kombu import Connection, Exchange, Queue

from inferq.core.broker import make_celery
from inferq.core.redis_transport import Transport
from inferq.core.settings import Settings
from tests.services import wipe_redis


@pytest.fixture
def own(settings: Settings) -> Iterator[Settings]:
    """This run's Redis, a namespace of this test's own."""
    mine = settings.replace(namespace=f"{settings.namespace}ack{uuid.uuid4().hex[:6]}")
    yield mine
    wipe_redis(mine.broker_url or "", mine.namespace)


@pytest.fixture
def channel(own: Settings) -> Iterator[object]:
    """A channel of the worker's transport with four messages delivered to it, unacked."""
    prefix = f"{own.namespace}:"
    with Connection(
        own.broker_url, transport=Transport, transport_options={"global_keyprefix": prefix}
    ) as connection:
        chan = connection.channel()
        queue = Queue("acks", Exchange("acks", type="direct"), routing_key="acks")
        producer = connection.Producer(chan)
        for n in range(4):
            producer.publish({"n": n}, exchange=queue.exchange, routing_key="acks", declare=[queue])
        chan.delivered = [chan.basic_get("acks", no_ack=False) for _ in range(4)]  # type: ignore[attr-defined]
        yield chan
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


def test_acks_inside_the_block_reach_redis_together_when_it_ends(
    own: Settings, channel: object
) -> None:
    """Catches: each ack sent on its own as before (the hash empties inside the block), or
    gathered acks never sent (the messages would come back after the visibility timeout and
    run again)."""
    messages = channel.delivered  # type: ignore[attr-defined]
    qos = channel.qos  # type: ignore[attr-defined]
    qos.prefetch_count = 4
    assert unacked(own) == (4, 4)
    assert not qos.can_consume()
    # Given the four messages acked inside one block
    with qos.acks_together():
        for message in messages:
            message.ack()
        # Then none of them left Redis before the block ended
        assert unacked(own) == (4, 4)
    # and all of them did when it ended, and their prefetch slots are free again
    assert unacked(own) == (0, 0)
    assert qos.can_consume()


def test_a_block_that_raises_still_sends_the_acks_made_before(
    own: Settings, channel: object
) -> None:
    """Catches: a batch that fails after acking some messages leaving them unacked (they
    would run again), or acking the others too (they would be lost)."""
    messages = channel.delivered  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError), channel.qos.acks_together():  # type: ignore[attr-defined]
        messages[0].ack()
        messages[1].ack()
        raise RuntimeError("the batch failed")
    assert unacked(own) == (2, 2)
    # and an ack outside any block goes at once, as kombu's does
    messages[2].ack()
    assert unacked(own) == (1, 1)


def test_the_worker_consumes_a_redis_broker_through_this_transport(own: Settings) -> None:
    """Catches: the worker's connection built on kombu's own Redis transport, whose acks go
    one round trip each."""
    app = make_celery(own)
    with app.connection_for_read() as connection:
        assert isinstance(connection.transport, Transport)
