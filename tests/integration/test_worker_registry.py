"""The fleet read from Redis: an index of heartbeats, never a SCAN of the whole keyspace.

Every finished job leaves a status key (kept a day) and, with the result cache on, a cache
key in the same Redis, so the keyspace grows with throughput; the fleet is read once a second
per API process (positions, ETAs, readiness) and by the scheduler on every pass.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import select

from db.jobs import claim_jobs
from db.tables import Job
from inferq.core.settings import Settings
from inferq.core.status import read_beats, remove_beat, worker_key, workers_key, write_beat
from inferq.domain.fleet import worker_beats
from scheduler.service import make_reconciler
from tests.factories import pixels
from tests.integration.conftest import Caller


class Counting(redis.Redis):
    """A client that records the name of every command it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[str] = []

    def execute_command(self, *args: Any, **options: Any) -> Any:
        self.sent.append(str(args[0]).upper())
        return super().execute_command(*args, **options)


@pytest.fixture
def fleet(settings: Settings) -> Iterator[tuple[Counting, Settings]]:
    """A namespace of its own on the test Redis, through a counting client."""
    mine = settings.replace(namespace=f"{settings.namespace}fl{uuid.uuid4().hex[:6]}")
    client = Counting.from_url(settings.effective_redis_url)
    yield client, mine
    for key in client.scan_iter(match=f"{mine.namespace}:*", count=1000):
        client.delete(key)
    client.close()


def beat(client: redis.Redis, settings: Settings, name: str, lanes: list[str], ttl_ms: int) -> None:
    body = {"name": name, "lanes": lanes, "consuming": True, "ready": True, "stalled_s": 0}
    write_beat(client, settings, name, json.dumps(body), ttl_ms)


def test_reading_the_fleet_costs_its_workers_not_the_keyspace(
    fleet: tuple[Counting, Settings],
) -> None:
    """Catches: a SCAN over every key of the namespace (each finished job's status and cache
    keys) once a second per API process, its cost growing with the jobs of the last day."""
    client, settings = fleet
    # Given two live workers among the keys 20,000 finished jobs left
    pipe = client.pipeline(transaction=False)
    for n in range(20_000):
        pipe.set(f"{settings.namespace}:job:{n}:status", "succeeded", ex=600)
    pipe.execute()
    beat(client, settings, "worker-1@test", ["online"], 60_000)
    beat(client, settings, "batch-1@test", ["batch"], 60_000)

    # When the fleet is read
    client.sent.clear()
    beats = worker_beats(client, settings)

    # Then both workers are found, in one command that touches no other key
    assert [(b.name, b.lanes) for b in beats] == [
        ("batch-1@test", ("batch",)),
        ("worker-1@test", ("online",)),
    ]
    assert client.sent == ["EVAL"]


def test_a_worker_leaves_the_fleet_when_its_heartbeat_expires_or_it_stops(
    fleet: tuple[Counting, Settings],
) -> None:
    """Catches: an index that keeps naming workers that died (a crash writes no goodbye), or
    one that forgets a worker still beating."""
    client, settings = fleet
    # Given a worker that crashed (its last beat expires soon), one that stops cleanly and
    # one that keeps beating
    beat(client, settings, "crashed@test", ["online"], 200)
    beat(client, settings, "stopping@test", ["online"], 60_000)
    beat(client, settings, "alive@test", ["online"], 60_000)
    assert set(read_beats(client, settings)) == {"crashed@test", "stopping@test", "alive@test"}

    # When the crashed one's heartbeat expires and the other says goodbye
    remove_beat(client, settings, "stopping@test")
    deadline = time.monotonic() + 10
    while client.exists(worker_key(settings, "crashed@test")) and time.monotonic() < deadline:
        time.sleep(0.05)

    # Then only the live one is read, and the index no longer names the others
    assert set(read_beats(client, settings)) == {"alive@test"}
    assert client.smembers(workers_key(settings)) == {b"alive@test"}

    # And a beat after a pause names a worker again
    beat(client, settings, "crashed@test", ["online"], 60_000)
    assert set(read_beats(client, settings)) == {"crashed@test", "alive@test"}


def test_the_reconciler_requeues_the_jobs_of_workers_without_a_heartbeat_only(
    alice: Caller, settings: Settings, digits_version: int
) -> None:
    """Catches: the jobs of a live worker of an earlier release (its heartbeat key written,
    the index not) taken for lost and run twice, or a dead worker's jobs left running."""
    client = redis.Redis.from_url(settings.effective_redis_url)
    ids = [
        alice.post("/v1/jobs", {"model": "digits", "input": pixels(float(v))}).get_json()["id"]
        for v in (1, 2, 3)
    ]
    holders = {
        ids[0]: f"gone-{uuid.uuid4().hex[:6]}@test",  # died: no heartbeat at all
        ids[1]: f"older-{uuid.uuid4().hex[:6]}@test",  # alive, writes only its key
        ids[2]: f"newer-{uuid.uuid4().hex[:6]}@test",  # alive, writes key and index
    }
    reconciler = make_reconciler(settings)
    try:
        # Given three jobs running on three workers
        with reconciler.sessions.begin() as session:
            for job_id, worker in holders.items():
                claim_jobs(session, [job_id], worker)
        body = json.dumps({"lanes": ["online"], "consuming": True})
        client.set(worker_key(settings, holders[ids[1]]), body, px=60_000)
        write_beat(client, settings, holders[ids[2]], body, 60_000)

        # When the reconciler passes
        reconciler.run_once()

        # Then only the dead worker's job is back in the queue
        with reconciler.sessions() as session:
            rows = session.execute(
                select(Job.id, Job.status, Job.worker).where(
                    Job.id.in_([uuid.UUID(i) for i in ids])
                )
            ).all()
        found = {str(row.id): (row.status, row.worker) for row in rows}
        assert found == {
            ids[0]: ("queued", None),
            ids[1]: ("running", holders[ids[1]]),
            ids[2]: ("running", holders[ids[2]]),
        }
    finally:
        client.delete(*(worker_key(settings, w) for w in holders.values()))
        client.srem(workers_key(settings), *holders.values())
        client.close()
        reconciler.sessions.kw["bind"].dispose()
        reconciler.redis.close()
