"""announce (inferq.core.status): a worker's finished batch, its status keys, its result-cache
entries and its completion signal, in one command. On this run's Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
import redis
from redis.exceptions import NoScriptError

from inferq.core.messages import Completion
from inferq.core.settings import Settings
from inferq.core.status import announce, completion_channel, status_key
from tests.integration.test_submit_round_trips import CountingConnection
from tests.services import wipe_redis


@pytest.fixture
def own(settings: Settings) -> Iterator[Settings]:
    namespace = f"{settings.namespace}announce{uuid.uuid4().hex[:6]}"
    yield settings.replace(namespace=namespace, status_ttl_s=86_400, cache_ttl_s=600)
    wipe_redis(settings.effective_redis_url, namespace)


def test_a_batch_is_announced_in_one_command(own: Settings, counting_redis: redis.Redis) -> None:
    """Catches: a status or cache key not set, set without its TTL or with the other's, the
    completion not published or without the jobs' fields, or more than one command sent."""
    listener = counting_redis.pubsub(ignore_subscribe_messages=True)
    listener.subscribe(completion_channel(own))
    listener.get_message(timeout=1.0)
    jobs = [str(uuid.uuid4()) for _ in range(3)]
    cache_keys = [f"{own.namespace}:cache:{n}" for n in range(2)]
    announce(counting_redis, own, [(str(uuid.uuid4()), "succeeded")])  # Redis knows the script now
    listener.get_message(timeout=1.0)
    CountingConnection.sends = []

    # When a worker announces a batch of three jobs, two of them with a cached output
    announce(
        counting_redis,
        own,
        [(jobs[0], "succeeded"), (jobs[1], "succeeded"), (jobs[2], "failed")],
        cache=[(cache_keys[0], '{"label": 3}'), (cache_keys[1], '{"label": 7}')],
        details={jobs[0]: {"status": "succeeded", "output": {"label": 3}}},
    )

    # Then one command went
    assert CountingConnection.sends == [["EVALSHA"]]
    # and each status key holds its job's status for the status TTL
    statuses = [counting_redis.get(status_key(own, job)) for job in jobs]
    assert statuses == [b"succeeded", b"succeeded", b"failed"]
    for job in jobs:
        assert (
            own.worker.status_ttl_s - 5
            < counting_redis.ttl(status_key(own, job))
            <= (own.worker.status_ttl_s)
        )
    # and each cache entry its output for the cache TTL
    assert [counting_redis.get(key) for key in cache_keys] == [b'{"label": 3}', b'{"label": 7}']
    for key in cache_keys:
        assert own.worker.cache_ttl_s - 5 < counting_redis.ttl(key) <= own.worker.cache_ttl_s
    # and the completion names every job, with the fields it was given
    message = listener.get_message(timeout=2.0)
    listener.close()
    assert message is not None
    done = Completion.decode(message["data"])
    assert done.job_ids == tuple(jobs)
    assert done.jobs == {jobs[0]: {"status": "succeeded", "output": {"label": 3}}}


def test_with_the_cache_off_no_entry_is_written(own: Settings, counting_redis: redis.Redis) -> None:
    no_cache = own.replace(cache_ttl_s=0)
    job, key = str(uuid.uuid4()), f"{own.namespace}:cache:off"

    announce(counting_redis, no_cache, [(job, "succeeded")], cache=[(key, '{"label": 1}')])

    assert counting_redis.get(status_key(own, job)) == b"succeeded"
    assert counting_redis.exists(key) == 0


def test_a_redis_that_forgot_the_script_still_gets_the_batch(
    own: Settings, counting_redis: redis.Redis, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: a Redis restarted (or its scripts flushed) since the worker's last batch
    leaving the next batch unannounced: its long-polls would wait out their time. (Redis's
    script cache is the server's: flushing it would reach every other test's Redis user.)"""

    def forgot(*args: object, **kwargs: object) -> object:
        raise NoScriptError("No matching script. Please use EVAL.")

    monkeypatch.setattr(counting_redis, "evalsha", forgot)
    job = str(uuid.uuid4())

    CountingConnection.sends = []
    announce(counting_redis, own, [(job, "succeeded")])

    assert CountingConnection.sends == [["EVAL"]]
    assert counting_redis.get(status_key(own, job)) == b"succeeded"
