"""Dynamic batching on top of celery-batches: flush on a full buffer, a quiet gap, or a deadline.

celery-batches flushes on a count or on a fixed timer. A fixed timer caps batches at what
the consumer fetches in one tick (the Redis transport fetches one message per loop turn),
so a deep queue still yields small batches. Here the timer ticks fast and a tick only
flushes when messages stopped arriving for ``idle_gap_s`` (light load: answer at once) or
the oldest buffered message has waited ``max_delay_s`` (heavy load: fill the batch, then
go) -- Triton's ``max_queue_delay`` with a quiet-gap shortcut.

At light load -- a lone job after a lull (no message for ``sparse_gap_s``, and none read
within ``idle_gap_s`` of the last batch's end), when the last batch held one job too -- the
message goes at once: nothing is coming to share its batch, and
waiting for the quiet gap would only add latency. Under load messages come close together or
carry several jobs each, and batches form as above.

A message may carry many job ids (the API publishes the jobs it accepted together as one
message, see api.services.publisher), so a batch is also full once its messages hold
``max_items`` ids.

Closed-loop clients come back in rounds: eight clients get their answers together and submit
again together, so the next batch holds the same eight jobs. Waiting out the quiet gap after
the eighth buys nothing, so a batch also goes once it holds as many jobs as the largest of the
last ``ROUNDS_KEPT`` rounds. A round starts with a message read while the worker was idle
(not within a quiet gap of the last batch's end): a backlogged worker batches by the gap and
the deadline alone, as before. The rule never makes a batch smaller than a recent round, and
a round that outgrows it (sixteen clients where there were eight: the second eight are read
right after the first eight's batch) is counted whole, and raises it for the next.
"""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable
from typing import Any

from celery_batches import Batches

TICK_S = 0.001
#: The header a message's arrival time (Unix seconds) travels in to the batch (``fetched_at``).
FETCHED_AT = "inferq_fetched_at"
#: How many past rounds the expected size of the next one is taken from (their largest).
ROUNDS_KEPT = 16


class DynamicBatches(Batches):
    """A Batches task whose timer flushes on a quiet gap or a deadline, not every tick."""

    abstract = True
    idle_gap_s = 0.002
    max_delay_s = 0.02
    #: Job ids that make a batch full, whatever the number of messages; 0: count messages only.
    max_items = 0
    #: A message this long after the previous one is a lull's first: it goes at once.
    sparse_gap_s = 0.004

    def Strategy(self, task: Any, app: Any, consumer: Any) -> Callable[..., None]:
        # Celery builds the strategy again each time the consumer (re)connects, after clearing
        # the event loop's timers. celery-batches arms its flush timer only while it records
        # none (``_tref``): forget the one from before, or a partial batch never flushes again
        # and, once the prefetch window holds only unflushed messages, the worker takes no
        # more (celery-batches issue 99). What was buffered then goes with the next batch.
        self._tref = None
        self._consumer = consumer
        self._send_acks: Callable[[], None] | None = None  # a new consumer has a new hub
        handle = super().Strategy(task, app, consumer)
        if self._buffer.qsize():
            self._tref = consumer.timer.call_repeatedly(self.flush_interval, self._do_flush)
        self._first_at = self._last_at = time.monotonic()
        # When the last batch ended. The solo pool runs a batch inside the consumer's loop, so
        # what reached the broker meanwhile is read only after it: a gap since the previous
        # message, but a backlog, not a lull (read as a lull, eight clients resubmitting one by
        # one kept a busy worker in batches of one).
        self._done_at = float("-inf")
        self._items = self._last_batch = 0
        self._alone = False
        # Jobs in the rounds before the current one, in the current one, and the largest of
        # the last ROUNDS_KEPT: a batch that holds that many goes at once.
        self._rounds: deque[int] = deque(maxlen=ROUNDS_KEPT - 1)
        self._round = self._expected = 0
        self._cut_short = self._fresh = False

        def on_message(message: Any, body: Any, *args: Any, **kwargs: Any) -> None:
            now = time.monotonic()
            if isinstance(message.headers, dict):  # protocol 2: the request reads them
                message.headers[FETCHED_AT] = time.time()
            items = items_in(message, body)
            if self._buffer.qsize() == 0:
                self._first_at = now
                self._items = 0
                # Light load shows as a lone job after a lull, following a batch of one (or
                # none yet); a message carrying several jobs, or a full last batch, is load.
                lull = (
                    now - self._last_at >= self.sparse_gap_s
                    and now - self._done_at >= self.idle_gap_s
                )
                self._alone = lull and items == 1 and self._last_batch <= 1
                # A round's first: the worker was idle, not behind (backlogged, it batches
                # by the gap and the deadline alone)
                self._fresh = now - self._done_at >= self.idle_gap_s
            self._last_at = now
            self._items += items
            handle(message, body, *args, **kwargs)
            if self._go_now():
                self._do_flush()

        return on_message

    def _go_now(self) -> bool:
        """The buffer goes without waiting: a lone job at light load, ``max_items`` ids, or a
        round's jobs, as many as the largest recent round held."""
        return (
            self._alone
            or bool(self.max_items and self._items >= self.max_items)
            or (self._fresh and 1 < self._expected <= self._items)
        )

    def _count_round(self) -> None:
        """Add the batch about to go to its round, and expect the next round to be as large as
        the largest recent one. A batch is a round of its own unless the last one went at the
        expected size and this one's first message came right behind it (read within a quiet
        gap of that batch's end): then the round outgrew what was expected, and both are it."""
        if self._cut_short and not self._fresh:
            self._round += self._items
        else:
            if self._round:
                self._rounds.append(self._round)
            self._round = self._items
        self._cut_short = self._fresh and 1 < self._expected <= self._items
        self._expected = max(self._round, max(self._rounds, default=0))

    def _do_flush(self) -> None:
        waiting = self._buffer.qsize()
        if 0 < waiting < self.flush_every and not self._go_now():
            now = time.monotonic()
            still_arriving = now - self._last_at < self.idle_gap_s
            if still_arriving and now - self._first_at < self.max_delay_s:
                return  # more are coming and the oldest can still wait: let the batch grow
        if waiting:
            self._count_round()
            self._last_batch, self._items, self._alone = self._items, 0, False
        super()._do_flush()
        if waiting:
            self._done_at = time.monotonic()
            self._gather_acks()

    def _gather_acks(self) -> None:
        """Send the acks of the batch that just ran in one round trip, not one per message.

        Celery schedules each message's ack on the event loop (``call_soon``): they run at the
        start of its next turn. On a Redis broker (inferq.core.redis_transport) the channel
        gathers them from now on, and a tick callback sends what it gathered at the end of
        each turn; two turns with nothing gathered end the gathering. Elsewhere (RabbitMQ, or
        no event loop) acks go as before."""
        consumer = getattr(self, "_consumer", None)
        channel = getattr(getattr(consumer, "task_consumer", None), "channel", None)
        qos: Any = getattr(channel, "qos", None)
        hub = getattr(consumer, "hub", None)
        if hub is None or not hasattr(qos, "gather_acks"):
            return
        qos.gather_acks()
        self._quiet_ticks = 0
        if self._send_acks is not None:
            return

        def send_acks() -> None:
            if qos.gathered():
                self._quiet_ticks = 0
                qos.send_gathered()
                qos.gather_acks()
                return
            self._quiet_ticks += 1
            if self._quiet_ticks >= 2:
                qos.send_gathered()
                hub.on_tick.discard(send_acks)
                if self._send_acks is send_acks:  # not one a new consumer armed since
                    self._send_acks = None

        self._send_acks = send_acks
        hub.on_tick.add(send_acks)


def items_in(message: Any, body: Any) -> int:
    """Job ids in a predict message, at least 1. Celery hands protocol-2 messages over
    undecoded (``body`` None); their payload decodes to ``(args, kwargs, embed)``."""
    try:
        ids = (message.payload if body is None else body)[0][0]
    except Exception:  # a malformed message counts as one; the task itself drops it
        return 1
    return max(1, len(ids)) if isinstance(ids, list) else 1
