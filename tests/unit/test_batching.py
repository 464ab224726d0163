"""DynamicBatches: a batch is full by messages or by the job ids those messages carry."""

from __future__ import annotations

import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.mocks import TaskMessage

from workers.dynamic_batching import DynamicBatches, items_in


class Pool:
    """Records each batch handed to the pool instead of running it."""

    def __init__(self) -> None:
        self.batches: list[list[list[str]]] = []

    def apply_async(self, fn: Any, args: tuple[Any, ...], **kwargs: Any) -> None:
        _, (requests,), _, _ = args
        self.batches.append([request.args[0] for request in requests])


def strategy(flush_every: int, max_items: int, sparse_gap_s: float = 60) -> tuple[Any, Pool]:
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
        sparse_gap_s=sparse_gap_s,  # by default no message in a test comes after a lull
    )
    def predict(requests: Any) -> None:
        raise AssertionError("the recording pool never runs batches")

    pool = Pool()
    timer = SimpleNamespace(call_repeatedly=lambda *args, **kwargs: SimpleNamespace())
    consumer = SimpleNamespace(
        pool=pool, hostname="w@test", connection_errors=(), event_dispatcher=None, timer=timer
    )
    return predict.Strategy(predict, app, consumer), pool


class Clock:
    """The batching rule's clock, moved by the test alone (a loaded machine's pauses between
    two deliveries would otherwise read as lulls)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    monkeypatch.setattr("workers.dynamic_batching.time", fake)
    return fake


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


def test_a_message_after_a_lull_goes_at_once_and_close_ones_wait_to_share_a_batch(
    clock: Clock,
) -> None:
    handler, pool = strategy(flush_every=64, max_items=64, sparse_gap_s=0.05)
    clock.sleep(0.06)
    deliver(handler, ["a"])
    assert pool.batches == [[["a"]]]  # nothing came for a while: no reason to wait
    deliver(handler, ["b"])
    deliver(handler, ["c"])
    assert pool.batches == [[["a"]]]  # close behind: these wait for company (gap or deadline)
    clock.sleep(0.06)
    deliver(handler, ["d"])  # not a lull's first: the buffer still holds b and c
    assert pool.batches == [[["a"]]]


def test_after_a_lull_a_message_carrying_load_still_waits_for_company(clock: Clock) -> None:
    handler, pool = strategy(flush_every=64, max_items=3, sparse_gap_s=0.05)
    # Given a full batch (load)
    for ids in (["a"], ["b"], ["c"]):
        deliver(handler, ids)
    assert pool.batches == [[["a"], ["b"], ["c"]]]
    # When a lone job comes after a lull, it waits: the last batch says load
    clock.sleep(0.06)
    deliver(handler, ["d"])
    assert len(pool.batches) == 1
    handler, pool = strategy(flush_every=64, max_items=64, sparse_gap_s=0.05)
    clock.sleep(0.06)
    deliver(handler, ["e", "f"])  # a message of several jobs after a lull is load too
    assert pool.batches == []
