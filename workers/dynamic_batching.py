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
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from celery_batches import Batches

TICK_S = 0.001
#: The header a message's arrival time (Unix seconds) travels in to the batch (``fetched_at``).
FETCHED_AT = "inferq_fetched_at"


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
            self._last_at = now
            self._items += items
            handle(message, body, *args, **kwargs)
            if self._go_now():
                self._do_flush()

        return on_message

    def _go_now(self) -> bool:
        """The buffer goes without waiting: a lone job at light load, or ``max_items`` ids."""
        return self._alone or bool(self.max_items and self._items >= self.max_items)

    def _do_flush(self) -> None:
        waiting = self._buffer.qsize()
        if 0 < waiting < self.flush_every and not self._go_now():
            now = time.monotonic()
            still_arriving = now - self._last_at < self.idle_gap_s
            if still_arriving and now - self._first_at < self.max_delay_s:
                return  # more are coming and the oldest can still wait: let the batch grow
        if waiting:
            self._last_batch, self._items, self._alone = self._items, 0, False
        super()._do_flush()
        if waiting:
            self._done_at = time.monotonic()


def items_in(message: Any, body: Any) -> int:
    """Job ids in a predict message, at least 1. Celery hands protocol-2 messages over
    undecoded (``body`` None); their payload decodes to ``(args, kwargs, embed)``."""
    try:
        ids = (message.payload if body is None else body)[0][0]
    except Exception:  # a malformed message counts as one; the task itself drops it
        return 1
    return max(1, len(ids)) if isinstance(ids, list) else 1
