"""DynamicBatches: a batch is full by messages or by the job ids those messages carry."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

from celery import Celery
from celery.contrib.testing.mocks import TaskMessage

from workers.batching import DynamicBatches, items_in


class Pool:
    """Records each batch handed to the pool instead of running it."""

    def __init__(self) -> None:
        self.batches: list[list[list[str]]] = []

    def apply_async(self, fn: Any, args: tuple[Any, ...], **kwargs: Any) -> None:
        _, (requests,), _, _ = args
        self.batches.append([request.args[0] for request in requests])


def strategy(flush_every: int, max_items: int) -> tuple[Any, Pool]:
    """The message handler the worker's consumer would call, wired to a recording pool."""
    app = Celery("t", set_as_current=False)

    @app.task(
        name="t.predict",
        base=DynamicBatches,
        flush_every=flush_every,
        flush_interval=60,
        idle_gap_s=60,  # neither the quiet gap nor the deadline flushes within a test
        max_delay_s=60,
        max_items=max_items,
    )
    def predict(requests: Any) -> None:
        raise AssertionError("the recording pool never runs batches")

    pool = Pool()
    timer = SimpleNamespace(call_repeatedly=lambda *args, **kwargs: SimpleNamespace())
    consumer = SimpleNamespace(
        pool=pool, hostname="w@test", connection_errors=(), event_dispatcher=None, timer=timer
    )
    return predict.Strategy(predict, app, consumer), pool


def deliver(handler: Any, ids: list[str]) -> None:
    message = TaskMessage("t.predict", id=uuid.uuid4().hex, args=[ids])
    handler(message, None, lambda: None, lambda: None, set())


def test_a_batch_is_full_once_its_messages_carry_max_items_ids() -> None:
    handler, pool = strategy(flush_every=64, max_items=4)
    deliver(handler, ["a"])
    deliver(handler, ["b", "c"])
    assert pool.batches == []  # three ids: room for more
    deliver(handler, ["d", "e"])
    assert pool.batches == [[["a"], ["b", "c"], ["d", "e"]]]
    deliver(handler, ["f"])
    deliver(handler, ["g", "h", "i"])
    assert pool.batches[1:] == [[["f"], ["g", "h", "i"]]]  # counting restarts with each batch


def test_the_message_count_still_fills_a_batch() -> None:
    handler, pool = strategy(flush_every=3, max_items=64)
    for ids in (["a"], ["b"], ["c"], ["d"]):
        deliver(handler, ids)
    assert pool.batches == [[["a"], ["b"], ["c"]]]


def test_a_malformed_message_counts_as_one_item() -> None:
    assert items_in(SimpleNamespace(payload=(["x"], {}, {})), None) == 1
    assert items_in(SimpleNamespace(payload=None), None) == 1
    assert items_in(None, ([["a", "b"]], {}, {})) == 2
    assert items_in(SimpleNamespace(payload=([[]], {}, {})), None) == 1
