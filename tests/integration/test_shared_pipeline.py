"""SharedPipeline (api.services.shared_pipeline): the requests that queue while a round trip
is in flight share the next one, and each gets its own replies. On this run's Redis, with
real threads."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from redis.backoff import NoBackoff
from redis.client import Pipeline
from redis.retry import Retry

from api.services.shared_pipeline import SharedPipeline
from inferq.core.settings import Settings
from tests.integration.test_submit_round_trips import CountingConnection
from tests.services import wipe_redis

#: More than a pipeline of 64 would carry: a group has no cap.
FOLLOWERS = 80


@pytest.fixture
def prefix(settings: Settings) -> Iterator[str]:
    namespace = f"{settings.namespace}trips{uuid.uuid4().hex[:6]}"
    yield namespace
    wipe_redis(settings.effective_redis_url, namespace)


def incr_and_get(key: str) -> Any:
    """A request's commands: count its key up, then read it."""

    def fill(pipe: Pipeline) -> int:
        pipe.incr(key)
        pipe.get(key)
        return 2

    return fill


def run_with_followers(
    shared: SharedPipeline, first: Any, followers: list[Any]
) -> tuple[Any, list[Any]]:
    """Run ``first``; while its round trip is in flight, ``followers`` from threads of their
    own (the first's fill waits until all of them queued). Returns each one's outcome."""
    outcomes: list[Any] = [None] * len(followers)

    def follow(n: int) -> None:
        try:
            outcomes[n] = shared.run(followers[n])
        except Exception as exc:
            outcomes[n] = exc

    threads = [threading.Thread(target=follow, args=(n,)) for n in range(len(followers))]

    def leading(pipe: Pipeline) -> int:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(shared._queued) < len(followers) and time.monotonic() < deadline:
            time.sleep(0.005)
        return int(first(pipe))

    mine = shared.run(leading)
    for thread in threads:
        thread.join(10)
    return mine, outcomes


def test_requests_queued_behind_a_round_trip_share_the_next_one(
    counting_redis: redis.Redis, prefix: str
) -> None:
    """Catches: each request sending its own round trip, or a request handed another's
    replies."""
    shared = SharedPipeline(counting_redis)
    keys = [f"{prefix}:k{n}" for n in range(FOLLOWERS)]
    # When many requests queue while the first one's round trip is in flight
    mine, theirs = run_with_followers(
        shared, incr_and_get(f"{prefix}:first"), [incr_and_get(k) for k in keys]
    )
    # Then the first one's commands went alone, and all of theirs together in one round trip
    assert [len(sent) for sent in CountingConnection.sends] == [2, 2 * FOLLOWERS]
    # and each got the replies to its own commands
    assert mine == [1, b"1"]
    assert theirs == [[1, b"1"]] * FOLLOWERS
    # and a request after them leads at once, alone
    assert shared.run(incr_and_get(keys[0])) == [2, b"2"]
    assert [len(sent) for sent in CountingConnection.sends] == [2, 2 * FOLLOWERS, 2]


def test_a_request_whose_commands_fail_to_queue_fails_alone(
    counting_redis: redis.Redis, prefix: str
) -> None:
    """Catches: one request's mistake failing the others of its round trip, or its half-queued
    commands shifting their replies."""
    shared = SharedPipeline(counting_redis)

    def broken(pipe: Pipeline) -> int:
        pipe.incr(f"{prefix}:broken")
        raise ValueError("not a command")

    followers = [incr_and_get(f"{prefix}:a"), broken, incr_and_get(f"{prefix}:b")]
    mine, theirs = run_with_followers(shared, incr_and_get(f"{prefix}:first"), followers)
    assert mine == [1, b"1"]
    assert theirs[0] == [1, b"1"] and theirs[2] == [1, b"1"]
    assert isinstance(theirs[1], ValueError)
    assert counting_redis.get(f"{prefix}:broken") is None  # its queued command never went


def test_when_redis_is_down_every_request_gets_the_error_as_its_replies() -> None:
    """Catches: a dead Redis raising out of the shared round trip (the submit's gates fail
    open: uncounted, uncached) or leaving a request waiting for replies that never come."""
    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    shared = SharedPipeline(dead)
    mine, theirs = run_with_followers(shared, incr_and_get("x"), [incr_and_get("y")] * 3)
    for replies in [mine, *theirs]:
        assert len(replies) == 2
        assert all(isinstance(reply, redis.ConnectionError) for reply in replies)
    # and the next request leads (no request was left holding the lead)
    assert isinstance(shared.run(incr_and_get("z"))[0], redis.ConnectionError)
