"""A long-poll on a job the API process has just answered for starts from the view it kept
(api.services.recent), not from a read of Postgres: after a submit's 202, and after a
long-poll that ran out. Redis's status key tells it a job finished in between."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import redis
from flask import Flask
from redis.backoff import NoBackoff
from redis.retry import Retry
from sqlalchemy import text

from api.services import jobs as jobs_service
from api.services.shared_pipeline import SharedPipeline
from api.state import ApiState
from inferq.core.status import announce
from tests.conftest import Keys
from tests.factories import pixels
from tests.integration.conftest import Caller


class Reads:
    """Counts the whole-job reads of the API (``api.services.jobs.load``)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.count = 0
        real = jobs_service.load

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.count += 1
            return real(*args, **kwargs)

        monkeypatch.setattr(jobs_service, "load", counted)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> Iterator[Reads]:
    yield Reads(monkeypatch)


def submitted(alice: Caller) -> str:
    response = alice.post("/v1/jobs", {"model": "digits", "input": pixels(3.0)})
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["id"])


def test_a_long_poll_after_the_submit_and_after_a_run_out_wait_reads_no_job(
    app: Flask, keys: Keys, no_worker: None, reads: Reads
) -> None:
    alice = Caller(app.test_client(), keys.alice)
    job_id = submitted(alice)
    first = alice.get(f"/v1/jobs/{job_id}?wait=0.5")
    again = alice.get(f"/v1/jobs/{job_id}?wait=0.5")
    for answer in (first, again):
        assert answer.status_code == 200
        body = answer.get_json()
        assert body["id"] == job_id and body["status"] == "queued"
        assert isinstance(body["position"], int)  # the wait's end read the job's progress
    assert reads.count == 0


def test_a_kept_view_serves_its_tenants_long_polls_and_no_other_tenant(
    app: Flask, keys: Keys, no_worker: None, reads: Reads
) -> None:
    alice = Caller(app.test_client(), keys.alice)
    bob = Caller(app.test_client(), keys.bob)
    job_id = submitted(alice)
    assert bob.get(f"/v1/jobs/{job_id}?wait=0.2").status_code == 404
    assert reads.count == 1  # bob's: read, and not found for his tenant
    assert alice.get(f"/v1/jobs/{job_id}?wait=0.2").status_code == 200
    assert reads.count == 1  # alice's: from the view the submit kept
    st: ApiState = app.extensions["inferq"]
    assert st.recent.take(uuid.UUID(job_id), uuid.uuid4()) is None
    tenant = next(iter(_tenant_of(app, job_id)))
    assert st.recent.take(uuid.UUID(job_id), tenant) is not None  # kept again as it answered


def test_many_long_polls_on_one_job_start_from_one_kept_view(
    app: Flask, keys: Keys, no_worker: None, reads: Reads
) -> None:
    """Catches: a view taken by the first long-poll only, so that every other client waiting
    on the same job reads it from Postgres (issue 16's many clients on one queued job)."""
    job_id = submitted(Caller(app.test_client(), keys.alice))
    clients = [Caller(app.test_client(), keys.alice) for _ in range(6)]
    with ThreadPoolExecutor(len(clients)) as pool:
        answers = list(pool.map(lambda c: c.get(f"/v1/jobs/{job_id}?wait=0.3"), clients))
    for answer in answers:
        assert answer.status_code == 200
        body = answer.get_json()
        assert body["id"] == job_id and body["status"] == "queued"
        assert isinstance(body["position"], int)
    assert reads.count == 0


def test_a_job_finished_before_the_long_poll_began_is_answered_at_once(
    app: Flask, keys: Keys, no_worker: None, reads: Reads
) -> None:
    """Its signal went before the waiter listened; only the status key says it."""
    alice = Caller(app.test_client(), keys.alice)
    st: ApiState = app.extensions["inferq"]
    job_id = submitted(alice)
    engine: Any = st.sessions.kw["bind"]
    with engine.begin() as conn:
        conn.execute(
            text(
                "UPDATE jobs SET status = 'succeeded', output = '{\"label\": 3}', "
                "started_at = now(), completed_at = now(), worker = 'w' WHERE id = :id"
            ),
            {"id": job_id},
        )
    announce(st.redis, st.settings, [(job_id, "succeeded")])
    started = time.monotonic()
    answer = alice.get(f"/v1/jobs/{job_id}?wait=20")
    waited = time.monotonic() - started
    assert answer.status_code == 200
    assert answer.get_json()["status"] == "succeeded"
    assert answer.get_json()["output"] == {"label": 3}
    assert waited < 10, f"the long-poll waited {waited:.1f} s for a job already finished"
    assert reads.count == 1


def test_where_redis_cannot_say_the_long_poll_reads_the_job(
    app: Flask, keys: Keys, no_worker: None, reads: Reads, monkeypatch: pytest.MonkeyPatch
) -> None:
    alice = Caller(app.test_client(), keys.alice)
    st: ApiState = app.extensions["inferq"]
    job_id = submitted(alice)

    # Redis down for the round trips requests make (the status key's check among them)
    dead = redis.Redis(
        host="127.0.0.1", port=1, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
    )
    monkeypatch.setattr(st, "redis_trips", SharedPipeline(dead))
    answer = alice.get(f"/v1/jobs/{job_id}?wait=0.2")
    assert answer.status_code == 200 and answer.get_json()["status"] == "queued"
    assert reads.count == 1


def _tenant_of(app: Flask, job_id: str) -> set[uuid.UUID]:
    st: ApiState = app.extensions["inferq"]
    engine: Any = st.sessions.kw["bind"]
    with engine.connect() as conn:
        return {conn.scalar(text("SELECT tenant_id FROM jobs WHERE id = :id"), {"id": job_id})}
