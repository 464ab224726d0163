"""DynamicBatches: a batch is full by messages or by the job ids those messages carry."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace
from typing import Any

import pytest
from celery import Celery
from celery.contrib.testing.mocks import TaskMessage

from workers.dynamic_batching import DynamicBatches, items_in
from workers.tasks.predict import fetched_times


class Pool:
    """Records each batch handed to the pool instead of running it."""

    def __init__(self) -> None:
        self.batches: list[list[list[str]]] = []
        self.requests: list[Any] = []

    def apply_async(self, fn: Any, args: tuple[Any, ...], **kwargs: Any) -> None:
        _, (requests,), _, _ = args
        self.batches.append([request.args[0] for request in requests])
        self.requests.append(requests)


class Timer:
    """The consumer's timer: keeps the flush callback celery-batches asks it to repeat, which
    the test calls (a tick) when it chooses."""

    def __init__(self) -> None:
        self.callback: Any = None

    def call_repeatedly(self, interval: float, callback: Any, *args: Any, **kwargs: Any) -> Any:
        self.callback = callback
        return SimpleNamespace(cancel=self.cancel)

    def cancel(self) -> None:
        self.callback = None

    def tick(self) -> None:
        if self.callback is not None:
            self.callback()


def batching_task(
    flush_every: int,
    max_items: int,
    sparse_gap_s: float = 60,
    idle_gap_s: float = 60,
    max_delay_s: float = 60,
    timer: Timer | None = None,
) -> tuple[Any, Any, SimpleNamespace, Pool]:
    """The predict task, its app, a consumer with a recording pool (and ``timer``)."""
    app = Celery("t", set_as_current=False)

    @app.task(
        name="t.predict",
        base=DynamicBatches,
        flush_every=flush_every,
        flush_interval=60,
        idle_gap_s=idle_gap_s,
        max_delay_s=max_delay_s,
        max_items=max_items,
        sparse_gap_s=sparse_gap_s,
    )
    def predict(requests: Any) -> None:
        raise AssertionError("the recording pool never runs batches")

    pool = Pool()
    consumer = SimpleNamespace(
        pool=pool,
        hostname="w@test",
        connection_errors=(),
        event_dispatcher=None,
        timer=timer or Timer(),
    )
    return predict, app, consumer, pool


def strategy(
    flush_every: int,
    max_items: int,
    sparse_gap_s: float = 60,
    idle_gap_s: float = 60,
    max_delay_s: float = 60,
    timer: Timer | None = None,
) -> tuple[Any, Pool]:
    """The message handler the worker's consumer would call, wired to a recording pool.

    By default neither the quiet gap nor the deadline flushes within a test, and no message
    comes after a lull."""
    predict, app, consumer, pool = batching_task(
        flush_every, max_items, sparse_gap_s, idle_gap_s, max_delay_s, timer
    )
    return predict.Strategy(predict, app, consumer), pool


class Clock:
    """The batching rule's clock, moved by the test alone (a loaded machine's pauses between
    two deliveries would otherwise read as lulls)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def monotonic(self) -> float:
        return self.now

    def time(self) -> float:
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


def batches_take(seconds: float, pool: Pool, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each batch handed to ``pool`` runs for ``seconds`` of the clock: the solo pool runs a
    batch inside the consumer's loop, before it reads another message."""
    runs = pool.apply_async

    def run(*args: Any, **kwargs: Any) -> None:
        runs(*args, **kwargs)
        clock.sleep(seconds)

    monkeypatch.setattr(pool, "apply_async", run)


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


def test_each_job_carries_the_time_its_message_reached_the_worker() -> None:
    """The batch's requests carry when each message arrived (``fetched_at``, the stage
    breakdown's "fetched"), for every job id the message held. (Checked against the
    on_message line that stamps the header removed: no times, and this fails.)"""
    handler, pool = strategy(flush_every=3, max_items=64)
    before = time.time()
    deliver(handler, ["a", "b"])
    between = time.time()
    time.sleep(0.01)
    deliver(handler, ["c"])
    deliver(handler, ["d"])
    after = time.time()
    (requests,) = pool.requests
    times = fetched_times(requests)
    assert sorted(times) == ["a", "b", "c", "d"]
    assert before <= times["a"] == times["b"] <= between < times["c"] <= times["d"] <= after


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


def test_a_message_read_right_after_a_batch_ran_is_a_backlog_not_a_lull(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The solo pool runs a batch inside the consumer's loop: what reached the broker while
    it ran is read only after it ends, long after the previous message, yet nothing was quiet.

    Catches: the lull judged by the previous message alone (then eight clients resubmitting
    one by one keep a busy worker in batches of one)."""
    timer = Timer()
    handler, pool = strategy(
        flush_every=64, max_items=64, sparse_gap_s=0.004, idle_gap_s=0.002, timer=timer
    )
    batches_take(0.005, pool, clock, monkeypatch)
    # Given a lone job after a lull, which goes at once and runs for 5 ms
    clock.sleep(0.01)
    deliver(handler, ["a"])
    assert pool.batches == [[["a"]]]
    # When the next is read 3 ms after that batch ended: quiet since, so it goes at once too
    clock.sleep(0.003)
    deliver(handler, ["b"])
    assert pool.batches == [[["a"]], [["b"]]]
    # When the next is read just after b's batch ended (6 ms after b's message)
    clock.sleep(0.001)
    deliver(handler, ["c"])
    # Then it waits for company: others reached the broker while the worker was busy
    assert pool.batches == [[["a"]], [["b"]]]
    clock.sleep(0.0005)
    deliver(handler, ["d"])
    clock.sleep(0.003)
    timer.tick()
    assert pool.batches == [[["a"]], [["b"]], [["c"], ["d"]]]


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


def test_a_partial_batch_goes_once_the_stream_has_been_quiet_for_the_idle_gap(
    clock: Clock,
) -> None:
    """Light load: a few jobs close together, then nothing more.

    Catches: the quiet-gap rule removed from ``DynamicBatches._do_flush`` (the partial batch
    then waits for its deadline), and a tick that flushes whatever it finds (before the gap).
    """
    timer = Timer()
    handler, pool = strategy(
        flush_every=64, max_items=64, idle_gap_s=0.010, max_delay_s=1.0, timer=timer
    )
    # Given two jobs 4 ms apart, the timer ticking in between and after
    deliver(handler, ["a"])
    clock.sleep(0.004)
    timer.tick()
    deliver(handler, ["b"])
    clock.sleep(0.008)
    timer.tick()
    # Then while the stream has been quiet for less than the gap, the batch waits to grow
    assert pool.batches == []
    # When it has been quiet for the gap (11 ms since b, 15 ms since a: far from the deadline)
    clock.sleep(0.003)
    timer.tick()
    # Then the partial batch goes
    assert pool.batches == [[["a"], ["b"]]]


def test_under_a_steady_trickle_a_partial_batch_goes_at_the_max_delay(clock: Clock) -> None:
    """Messages 4 ms apart never leave a 10 ms gap: the oldest one's 50 ms deadline sends them.

    Catches: the max-delay rule removed from ``DynamicBatches._do_flush`` (under a trickle the
    batch never goes until it is full), a deadline counted from the newest message instead of
    the oldest, one not restarted with the next batch, and a flush before the deadline.
    """
    timer = Timer()
    handler, pool = strategy(
        flush_every=64, max_items=64, idle_gap_s=0.010, max_delay_s=0.050, timer=timer
    )
    # Given a message every 4 ms from t=0 to t=48 ms, the timer ticking 1 ms after each
    sent = []
    for n in range(13):
        deliver(handler, [f"j{n}"])
        sent.append([f"j{n}"])
        clock.sleep(0.001)
        timer.tick()
        # Then no tick before the deadline (the last at t=49 ms) sends the partial batch
        assert pool.batches == [], f"flushed {1000 * (clock.now - 1000.0):.0f} ms in"
        clock.sleep(0.003)
    # When the trickle goes on past the oldest message's deadline (t=52, tick at t=53 ms)
    deliver(handler, ["j13"])
    sent.append(["j13"])
    clock.sleep(0.001)
    timer.tick()
    # Then everything buffered goes at once, at the first tick past the deadline
    assert pool.batches == [sent]
    # and the next message starts a deadline of its own
    clock.sleep(0.003)
    deliver(handler, ["k"])
    clock.sleep(0.001)
    timer.tick()
    assert pool.batches == [sent]


def test_after_a_lost_broker_connection_the_flush_timer_is_armed_again(clock: Clock) -> None:
    """Celery clears its event loop's timers when the broker connection is lost, and builds
    the task's strategy again on the new connection. celery-batches arms its flush timer only
    while none is recorded (``_tref``), so the one recorded before the loss, long gone, kept
    a partial batch from ever flushing: the worker took no more messages once its prefetch
    window held unflushed ones (the fault suite's RabbitMQ restart left 4 jobs queued for
    minutes).

    Mutation caught: the reset of ``_tref`` in ``DynamicBatches.Strategy`` removed (the batch
    delivered after the reconnect never goes)."""
    timer = Timer()
    predict, app, consumer, pool = batching_task(
        flush_every=64, max_items=64, idle_gap_s=0.010, max_delay_s=1.0, timer=timer
    )
    handler = predict.Strategy(predict, app, consumer)
    # Given a partial batch buffered, its flush timer armed
    deliver(handler, ["a"])
    assert timer.callback is not None
    # When the connection is lost before it went (Celery clears the loop's timers) and the
    # consumer starts again on a new connection
    timer.callback = None
    handler = predict.Strategy(predict, app, consumer)
    # Then what was buffered goes once the stream is quiet, with what came after it
    deliver(handler, ["b"])
    clock.sleep(0.011)
    timer.tick()
    assert pool.batches == [[["a"], ["b"]]]
    # and a later partial batch goes too
    deliver(handler, ["c"])
    clock.sleep(0.011)
    timer.tick()
    assert pool.batches[1:] == [[["c"]]]


def close_together(handler: Any, clock: Clock, *messages: list[str]) -> None:
    """Deliver ``messages`` half a millisecond apart (the API nodes' groups of one round)."""
    for ids in messages:
        deliver(handler, ids)
        clock.sleep(0.0005)


def ids(prefix: str, count: int) -> list[str]:
    return [f"{prefix}{n}" for n in range(count)]


def test_a_round_as_large_as_the_last_goes_without_waiting_out_the_quiet_gap(
    clock: Clock,
) -> None:
    """Eight closed-loop clients: their answers go out together and they submit again
    together, so each round of the worker holds the same eight jobs.

    Catches: the round rule removed from ``DynamicBatches._go_now`` (the second round waits
    for the quiet gap like the first), and a batch sent before it holds a whole round."""
    timer = Timer()
    handler, pool = strategy(
        flush_every=64, max_items=64, idle_gap_s=0.002, sparse_gap_s=0.004, timer=timer
    )
    # Given a first round of eight jobs in two messages, sent once the stream went quiet
    close_together(handler, clock, ids("a", 4), ids("b", 4))
    assert pool.batches == []
    clock.sleep(0.002)
    timer.tick()
    assert len(pool.batches) == 1
    # When the next round's eight come, after the answers went out and the clients submitted
    clock.sleep(0.010)
    close_together(handler, clock, ids("c", 3), ids("d", 5))
    # Then they go as the eighth arrives, with no tick of the timer
    assert pool.batches[1:] == [[ids("c", 3), ids("d", 5)]]
    # and a round short of eight waits for the quiet gap, as before
    clock.sleep(0.010)
    close_together(handler, clock, ids("e", 4), ids("f", 3))
    assert len(pool.batches) == 2
    clock.sleep(0.002)
    timer.tick()
    assert pool.batches[2:] == [[ids("e", 4), ids("f", 3)]]


def test_a_round_that_outgrows_the_last_raises_the_size_the_next_one_goes_at(
    clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Sixteen clients where there were eight: the first eight go at once, the second eight
    reach the worker while that batch runs and are read right after it. That is one round
    of sixteen, and the next round goes whole, not in two batches of eight.

    Catches: every batch counted as a round of its own (the worker stays at batches of eight
    under sixteen clients, twice the batches for the same jobs), and the rule applied to a
    backlog (a busy worker's batches cut at the size of a round)."""
    timer = Timer()
    handler, pool = strategy(
        flush_every=64, max_items=64, idle_gap_s=0.002, sparse_gap_s=0.004, timer=timer
    )
    batches_take(0.003, pool, clock, monkeypatch)
    # Given a round of eight
    close_together(handler, clock, ids("a", 8))
    clock.sleep(0.002)
    timer.tick()
    assert len(pool.batches) == 1
    # When sixteen come: eight go at once, the other eight are read right after that batch
    # (a backlog: they go by the quiet gap)
    clock.sleep(0.010)
    close_together(handler, clock, ids("b", 8))
    assert len(pool.batches) == 2
    close_together(handler, clock, ids("c", 4), ids("d", 4))
    assert len(pool.batches) == 2
    clock.sleep(0.002)
    timer.tick()
    assert len(pool.batches) == 3
    # Then the next round waits past eight and goes at sixteen, in one batch
    clock.sleep(0.010)
    close_together(handler, clock, ids("e", 8))
    assert len(pool.batches) == 3
    close_together(handler, clock, ids("f", 8))
    assert pool.batches[3:] == [[ids("e", 8), ids("f", 8)]]


def test_the_expected_round_follows_the_load_down(
    clock: Clock,
) -> None:
    """A round's size is expected from the largest of the last ROUNDS_KEPT rounds: once the
    load has fallen, smaller rounds go at once again.

    Catches: the largest round ever seen kept (a burst would leave every later round waiting
    out the gap)."""
    from workers.dynamic_batching import ROUNDS_KEPT

    timer = Timer()
    handler, pool = strategy(
        flush_every=64, max_items=6, idle_gap_s=0.002, sparse_gap_s=1.0, timer=timer
    )

    def round_sent_by_the_gap(count: int) -> None:
        clock.sleep(0.010)
        before = len(pool.batches)
        close_together(handler, clock, ids("x", count))
        if len(pool.batches) == before:
            clock.sleep(0.002)
            timer.tick()
        assert len(pool.batches) == before + 1

    # Given a full batch (six: max_items), then ROUNDS_KEPT - 1 rounds of three
    round_sent_by_the_gap(6)
    for _ in range(ROUNDS_KEPT - 1):
        round_sent_by_the_gap(3)
    # Then a round of three still waits for the gap: six is among the last ROUNDS_KEPT
    clock.sleep(0.010)
    close_together(handler, clock, ids("w", 3))
    assert len(pool.batches) == ROUNDS_KEPT
    clock.sleep(0.002)
    timer.tick()
    # and once the six is older than that, a round of three goes as its third job arrives
    clock.sleep(0.010)
    before = len(pool.batches)
    close_together(handler, clock, ids("y", 3))
    assert len(pool.batches) == before + 1


class GatheringQoS:
    """A channel's QoS that gathers acks (inferq.core.redis_transport.QoS), recording each
    round trip it would make: a list of the tags it carried."""

    def __init__(self) -> None:
        self._gathered: list[str] | None = None
        self.sent: list[list[str]] = []

    def ack(self, tag: str) -> None:
        if self._gathered is None:
            self.sent.append([tag])
        else:
            self._gathered.append(tag)

    def gather_acks(self) -> None:
        if self._gathered is None:
            self._gathered = []

    def gathered(self) -> int:
        return len(self._gathered or ())

    def send_gathered(self) -> None:
        tags, self._gathered = self._gathered, None
        if tags:
            self.sent.append(tags)


def test_the_acks_of_a_batch_go_in_one_round_trip_at_the_event_loops_next_tick() -> None:
    """Catches: the acks Celery schedules after a batch sent one round trip per message
    (nothing gathers them), or gathered and never sent (the messages would run again), or a
    worker that keeps gathering once the batches stop."""
    predict, app, consumer, pool = batching_task(flush_every=2, max_items=0)
    qos = GatheringQoS()
    hub = SimpleNamespace(on_tick=set())
    consumer.task_consumer = SimpleNamespace(channel=SimpleNamespace(qos=qos))
    consumer.hub = hub

    def turn(*acks: str) -> None:
        """One turn of the event loop: the acks scheduled on it, then its tick callbacks."""
        for tag in acks:
            qos.ack(tag)
        for callback in list(hub.on_tick):
            callback()

    handler = predict.Strategy(predict, app, consumer)
    # When two messages fill a batch, and Celery acks them on the loop's next turn
    deliver(handler, ["a"])
    deliver(handler, ["b"])
    assert pool.batches == [[["a"], ["b"]]]
    turn("a", "b")
    # Then both acks went in one round trip
    assert qos.sent == [["a", "b"]]
    # and two quiet turns later nothing gathers any more: an ack goes at once, as before
    turn()
    turn()
    assert hub.on_tick == set()
    qos.ack("c")
    assert qos.sent == [["a", "b"], ["c"]]


def test_without_a_gathering_channel_a_batch_still_runs() -> None:
    """Catches: a worker on RabbitMQ (its channel has no gather_acks) failing its flush."""
    predict, app, consumer, pool = batching_task(flush_every=2, max_items=0)
    consumer.task_consumer = SimpleNamespace(channel=SimpleNamespace(qos=object()))
    consumer.hub = SimpleNamespace(on_tick=set())
    handler = predict.Strategy(predict, app, consumer)
    deliver(handler, ["a"])
    deliver(handler, ["b"])
    assert pool.batches == [[["a"], ["b"]]]
    assert consumer.hub.on_tick == set()
