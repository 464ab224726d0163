"""The autoscaler's observation of a pool's backlog, read from the real broker.

Messages are published the way Celery publishes them (``send_task``, with and without a
priority) to a namespace's lanes, emptied before and after (``quiet_lane``): what the
observer counts is what a pool of workers would have waiting.
"""

from __future__ import annotations

import contextlib
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from db.engine import make_engine, make_session_factory
from inferq.core.broker import make_celery, queue_name, route
from inferq.core.messages import PredictRequest
from inferq.core.settings import Settings
from scheduler.autoscaler.observe import Observer, broker_ready_counts
from tests.factories import quiet_lane

POOL = ("online", "batch")


@contextlib.contextmanager
def watching(run: Settings) -> Iterator[Observer]:
    """An observer of ``POOL`` on ``run``'s broker; the pool's lanes empty before and after."""
    for lane in POOL:
        quiet_lane(run, lane)
    engine = make_engine(run.database_url or "", pool_size=1)
    watcher = Observer(run, POOL, make_session_factory(engine), window_s=5.0)
    try:
        yield watcher
    finally:
        watcher.close()
        engine.dispose()
        for lane in POOL:
            quiet_lane(run, lane)


@pytest.fixture
def on_redis(settings: Settings) -> Iterator[Observer]:
    with watching(settings) as watcher:
        yield watcher


@pytest.fixture(params=["redis", "amqp"])
def on_each_broker(request: pytest.FixtureRequest, settings: Settings) -> Iterator[Observer]:
    run = settings if request.param == "redis" else request.getfixturevalue("amqp_settings")
    with watching(run) as watcher:
        yield watcher


def publish(settings: Settings, lane: str, priorities: list[int | None]) -> None:
    """One predict message per entry, sent with that priority (None: none set)."""
    app = make_celery(settings)
    try:
        for priority in priorities:
            # ids of no job: a worker that ever got one would drop it
            message = PredictRequest((str(uuid.uuid4()),), lane)
            options: dict[str, Any] = {} if priority is None else {"priority": priority}
            app.send_task(message.task, args=message.to_args(), **route(settings, lane), **options)
    finally:
        app.close()


def settled(read: Any, expected: Any, timeout: float = 10.0) -> Any:
    """``read()`` once it equals ``expected``, or its last value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while (value := read()) != expected and time.monotonic() < deadline:
        time.sleep(0.1)
    return value


def test_the_redis_backlog_counts_every_priority_sub_list(on_redis: Observer) -> None:
    """Catches: ``redis_keys`` listing only the bare queue (or missing a priority step):
    prioritised messages would wait unseen while the pool stays small."""
    observer = on_redis
    settings = observer.settings
    assert observer.broker_ready() == {"online": 0, "batch": 0}
    # When Celery sends seven messages to the online lane, five of them with a priority
    publish(settings, "online", [None, 0, 4, 5, 7, 9, 200])
    # Then kombu spread them over the lane's list and its sub-lists <queue>\x06\x16<step>
    client = redis.Redis.from_url(settings.effective_redis_url)
    base = f"{settings.namespace}:{queue_name(settings, 'online')}"
    lengths = {
        step: client.llen(base + (f"\x06\x16{step}" if step else "")) for step in (0, 3, 6, 9)
    }
    client.close()
    assert lengths == {0: 2, 3: 2, 6: 1, 9: 2}
    # and the observer counts all seven as the lane's backlog
    assert observer.broker_ready() == {"online": 7, "batch": 0}
    assert broker_ready_counts(settings, POOL) == {"online": 7, "batch": 0}
    assert observer.observe().observation(current=0).backlog == 7


def test_a_pools_backlog_is_the_sum_over_its_lanes(on_each_broker: Observer) -> None:
    """Catches: the pool's backlog taken from one lane (the first, or the largest) instead of
    the sum over its lanes; on Redis also a priority sub-list of the second lane missed.
    (RabbitMQ keeps prioritised messages in the queue itself: one passive declare counts
    them.)"""
    observer = on_each_broker
    settings = observer.settings
    assert observer.broker_ready() == {"online": 0, "batch": 0}
    # When a pool of two lanes has three messages waiting on one and two on the other
    publish(settings, "online", [None, None, 9])
    publish(settings, "batch", [None, 6])
    # Then each lane shows its own, prioritised messages included
    expected = {"online": 3, "batch": 2}
    assert settled(observer.broker_ready, expected) == expected
    view = observer.observe()
    assert {lane.lane: lane.backlog for lane in view.lanes} == expected
    # and the pool's backlog, which the policy scales on, is their sum
    assert view.observation(current=1).backlog == 5
