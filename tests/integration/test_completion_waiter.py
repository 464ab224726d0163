"""CompletionWaiter (api.services.waiters): one subscription per process wakes the requests
waiting for the jobs a worker announced, and survives losing its connection. On this run's
Redis, with a real listener thread."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
import redis

from api.services.waiters import CompletionWaiter
from inferq.core.messages import Completion
from inferq.core.settings import Settings


@pytest.fixture
def name() -> str:
    return f"inferq-test-waiter-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def client(settings: Settings) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(settings.effective_redis_url)
    yield client
    client.close()


def listener_ids(client: redis.Redis, name: str) -> list[str]:
    return [str(c["id"]) for c in client.client_list() if c.get("name") == name]


def test_a_waiter_is_woken_by_its_jobs_completion_and_after_its_connection_is_lost(
    settings: Settings, client: redis.Redis, name: str
) -> None:
    """Catches: a listener that never reads again after its connection was killed (a Redis
    restart), or that does not let the requests waiting meanwhile re-check their jobs."""
    channel = f"{settings.namespace}:test-waiter:{name}"
    waiter = CompletionWaiter(
        lambda: redis.Redis.from_url(settings.effective_redis_url, client_name=name), channel
    )
    first, second = str(uuid.uuid4()), str(uuid.uuid4())

    # Given a request waiting for a job, woken by the job's completion with its fields
    with waiter.expect(first) as signal:
        client.publish(channel, Completion((first,), {first: {"status": "done"}}).encode())
        assert signal.wait(5.0)
        assert signal.payload == {"status": "done"}

    # When the listener's connection is killed while another request waits
    with waiter.expect(second) as lost:
        [listener] = listener_ids(client, name)
        client.client_kill_filter(_id=listener)
        # Then that request is woken to read its job again (a signal may have been missed)
        assert lost.wait(5.0)
        assert lost.payload is None

    # And the listener subscribes again, and the next completion wakes its waiter
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        if any(i != listener for i in listener_ids(client, name)):
            break
        time.sleep(0.05)
    with waiter.expect(second) as signal:
        for _ in range(50):  # until the new subscription has taken it
            client.publish(channel, Completion((second,), {}).encode())
            if signal.wait(0.1):
                break
        assert signal.is_set()
