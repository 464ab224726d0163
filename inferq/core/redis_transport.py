"""kombu's Redis transport, with a batch's acks in one round trip.

kombu emulates acks on Redis: each delivered message is kept in an "unacked" hash and an
index (a sorted set by delivery time) until it is acked, so that a worker that dies holding
it gives it back after the visibility timeout. Every ack is a MULTI/EXEC of its own. A worker
acks the messages of a batch one after the other once the batch has run (Celery schedules
each ack on its event loop): one round trip per message, about a seventh of the worker's
CPU at eight clients.

Here acks can be gathered (:meth:`QoS.gather_acks`) and sent as one pipeline, ZREM and HDEL
of all their tags (:meth:`QoS.send_gathered`); the worker gathers a batch's acks and sends
them on the event loop's next tick (workers.dynamic_batching). Nothing else changes: a
message leaves the unacked hash only after its batch ran, so a worker killed mid-batch
still gives back every message of it.
"""

from __future__ import annotations

import logging

import redis
from kombu.transport import redis as kombu_redis
from kombu.transport import virtual

log = logging.getLogger(__name__)


class QoS(kombu_redis.QoS):
    """Redis ack emulation whose acks can be gathered into one round trip."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)
        self._gathered: list[str] | None = None

    def ack(self, delivery_tag: str) -> None:
        if self._gathered is not None:
            self._gathered.append(delivery_tag)
            return
        super().ack(delivery_tag)

    def gather_acks(self) -> None:
        """From now on, acks wait in this process until :meth:`send_gathered`."""
        if self._gathered is None:
            self._gathered = []

    def gathered(self) -> int:
        """How many acks wait to be sent."""
        return len(self._gathered or ())

    def send_gathered(self) -> None:
        """Send the acks gathered so far in one round trip, and gather no more.

        Where that round trip fails, the messages stay unacked, as one failed ack leaves its
        message: they come back after the visibility timeout, and their jobs' guarded claims
        make the second delivery a no-op.
        """
        tags, self._gathered = self._gathered, None
        if tags:
            self._ack_all(tags)

    def restore_unacked(self, client: object = None) -> None:
        # A channel closing (warm shutdown, a lost connection) gives back what it holds
        # unacked: send the acks gathered first, or their messages would run again, and
        # forget them (kombu's Redis restore walks every delivered tag, acked or not).
        self.send_gathered()
        self._flush()
        super().restore_unacked(client)

    def _ack_all(self, tags: list[str]) -> None:
        try:
            with self.pipe_or_acquire() as pipe:
                pipe.zrem(self.unacked_index_key, *tags).hdel(self.unacked_key, *tags).execute()
        except redis.RedisError:
            log.warning(
                "could not ack a batch's messages; they come back after the visibility timeout",
                extra={"messages": len(tags)},
                exc_info=True,
            )
            return
        for tag in tags:
            virtual.QoS.ack(self, tag)


class Channel(kombu_redis.Channel):
    QoS = QoS


class Transport(kombu_redis.Transport):
    """``redis://`` and ``rediss://`` brokers (Celery's ``broker_transport``)."""

    Channel = Channel
