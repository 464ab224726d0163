"""Reliability rules on real Postgres and Redis: deadlines, poison isolation, outages."""

from __future__ import annotations

import base64
import datetime as dt
import json
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select, update

from api.app import create_app
from db.jobs import claim_jobs, mark_unpublished, requeue_jobs, take_unpublished
from db.tables import Job
from inferq.core.broker import make_celery, queue_name
from inferq.core.errors import ForeignRedis
from inferq.core.instance import Claim, claim_key
from inferq.core.settings import LANES, Settings
from scheduler.reconciler import broker_marker_key
from scheduler.service import make_reconciler
from tests.conftest import Keys
from tests.factories import pixels
from tests.integration.conftest import Caller
from workers.context import WorkerContext
from workers.runner import run_batch


@pytest.fixture
def ctx(settings: Settings, digits_version: int) -> Iterator[WorkerContext]:
    context = WorkerContext.create(
        settings, f"rel-{uuid.uuid4().hex[:6]}@test", make_celery(settings)
    )
    yield context
    context.redis.close()


def status_of(ctx: WorkerContext, job_id: str) -> Job:
    with ctx.sessions() as session:
        return session.scalars(select(Job).where(Job.id == uuid.UUID(job_id))).one()


def test_a_job_not_started_before_cancel_after_expires(
    alice: Caller, ctx: WorkerContext, settings: Settings
) -> None:
    response = alice.post(
        "/v1/jobs", {"model": "digits", "input": pixels(5.0)}, headers={"Cancel-After": "0.2"}
    )
    assert response.status_code == 202
    job = response.get_json()
    assert job["expires_at"] is not None
    time.sleep(0.4)
    # no worker may start it any more, and the reconciler fails it as expired
    assert run_batch(ctx, [job["id"]]) == []
    report = make_reconciler(settings).run_once()
    assert report.expired >= 1
    row = status_of(ctx, job["id"])
    assert row.status == "failed" and row.error == {
        "type": "expired",
        "message": "not started before its Cancel-After deadline",
    }
    assert row.started_at is None


@pytest.mark.parametrize("value", ["soon", "0", "-3", "1e9"])
def test_bad_cancel_after_is_400(alice: Caller, value: str) -> None:
    response = alice.post(
        "/v1/jobs", {"model": "digits", "input": pixels()}, headers={"Cancel-After": value}
    )
    assert response.status_code == 400
    assert response.mimetype == "application/problem+json"


def test_jobs_from_a_crashed_batch_are_retried_one_at_a_time(
    alice: Caller, ctx: WorkerContext
) -> None:
    # Given three jobs that were in a batch whose worker died (attempt 1 used up)
    ids = [
        alice.post("/v1/jobs", {"model": "digits", "input": pixels(float(v))}).get_json()["id"]
        for v in (1, 2, 3)
    ]
    with ctx.sessions.begin() as session:
        claim_jobs(session, ids, "dead@test")
        requeue_jobs(session, [uuid.UUID(i) for i in ids], "dead@test")
    # When a worker receives them together
    results = run_batch(ctx, ids)
    # Then it runs only one of them, alone, and hands the others back without using an attempt
    assert len(results) == 1 and results[0].batch_size == 1
    rows = [status_of(ctx, i) for i in ids]
    ran = [r for r in rows if r.status == "succeeded"]
    back = [r for r in rows if r.status == "queued"]
    assert len(ran) == 1 and ran[0].attempts == 2
    assert len(back) == 2 and all(r.attempts == 1 and r.worker is None for r in back)


def test_an_unreachable_database_is_503_not_500(
    settings: Settings, digits_version: int, keys: Keys
) -> None:
    down = settings.replace(database_url="postgresql+psycopg2://postgres@127.0.0.1:1/none")
    caller = Caller(create_app(down).test_client(), keys.alice)
    response = caller.get(f"/v1/jobs/{uuid.uuid4()}")
    assert response.status_code == 503
    assert response.headers["Retry-After"] == "2"
    assert "Traceback" not in response.get_data(as_text=True)


def test_a_lane_still_draining_its_queue_is_not_republished_early(
    alice: Caller, ctx: WorkerContext
) -> None:
    # Given two jobs whose messages went out two minutes ago, one online, one on the batch lane
    online = alice.post("/v1/jobs", {"model": "digits", "input": pixels()}).get_json()["id"]
    batch = alice.post(
        "/v1/jobs", {"model": "digits", "input": pixels(), "lane": "batch"}
    ).get_json()["id"]
    with ctx.sessions() as session:  # never committed: the test leaves no trace
        session.execute(
            update(Job)
            .where(Job.id.in_([uuid.UUID(online), uuid.UUID(batch)]))
            .values(published_at=func.now() - dt.timedelta(seconds=120))
        )
        # When the broker still holds messages for the online lane only
        taken = {
            str(job_id)
            for job_id, _ in take_unpublished(
                session, 60, limit=10**7, busy_lanes=["online"], busy_older_than_s=600
            )
        }
        session.rollback()
    # Then the online job waits its turn behind them, and the batch job (whose lane is empty,
    # so its message is gone) is published again
    assert online not in taken
    assert batch in taken


def test_the_reconciler_reads_busy_lanes_from_the_broker_and_fails_safe(
    settings: Settings,
) -> None:
    reconciler = make_reconciler(settings)
    # the real broker answers with a count per lane
    counts = reconciler.broker_ready(settings, LANES)
    assert set(counts) == set(LANES) and all(n >= 0 for n in counts.values())
    # a broker that cannot be read makes no lane busy: every stale job is republished as usual
    reconciler.broker_ready = lambda *_: {"online": 3, "batch": 0}
    assert reconciler._busy_lanes(["online", "batch"]) == ["online"]

    def unreachable(*_: object) -> dict[str, int]:
        raise ConnectionError("broker down")

    reconciler.broker_ready = unreachable
    assert reconciler._busy_lanes(["online"]) == []


def test_the_broker_is_asked_only_when_some_lane_has_jobs_old_enough_to_be_stale(
    alice: Caller, settings: Settings
) -> None:
    assert alice.post("/v1/jobs", {"model": "digits", "input": pixels()}).status_code == 202
    asked: list[Sequence[str]] = []

    def ready(_: Settings, lanes: Sequence[str]) -> dict[str, int]:
        asked.append(list(lanes))
        return dict.fromkeys(lanes, 0)

    # Given no job queued for as long as a day (after a pass that re-sends what was never
    # published), a pass does not bother the broker
    reconciler = make_reconciler(settings.replace(stale_queued_s=86_400))
    reconciler.run_once()
    reconciler.broker_ready = ready
    reconciler.run_once()
    assert asked == []
    # and with a wait short enough, it asks about the lanes holding such jobs only
    reconciler.settings = settings.replace(stale_queued_s=0)
    reconciler.run_once()
    assert asked and "online" in asked[0] and set(asked[0]) <= set(LANES)


def test_a_job_whose_publish_failed_is_sent_at_the_next_pass_however_young(
    alice: Caller, settings: Settings
) -> None:
    job_id = alice.post("/v1/jobs", {"model": "digits", "input": pixels()}).get_json()["id"]
    reconciler = make_reconciler(settings.replace(stale_queued_s=86_400))
    with reconciler.sessions.begin() as session:
        mark_unpublished(session, [uuid.UUID(job_id)])
    report = reconciler.run_once()
    assert report.republished >= 1
    with reconciler.sessions() as session:
        job = session.scalars(select(Job).where(Job.id == uuid.UUID(job_id))).one()
    assert job.published_at is not None


def queued_messages(settings: Settings, lane: str) -> list[str]:
    """The job ids of every message waiting in ``lane``'s queue on the (Redis) broker."""
    client = redis.Redis.from_url(settings.broker_url or "")
    try:
        raw = client.lrange(f"{settings.namespace}:{queue_name(settings, lane)}", 0, -1)
    finally:
        client.close()
    ids: list[str] = []
    for envelope in raw:
        args, _, _ = json.loads(base64.b64decode(json.loads(envelope)["body"]))
        ids += args[0]
    return ids


def test_a_broker_that_lost_its_queue_gets_every_queued_job_at_the_next_pass_once(
    alice: Caller, settings: Settings
) -> None:
    """Catches: jobs whose messages went with a restarted broker waiting out
    INFERQ_STALE_QUEUED_S (issue 16: 1,083 jobs queued two minutes after Redis came back).
    Mutations tried: `_refill_after_broker_restart` returning 0 at once (the first pass sends
    nothing: fails), and the marker's `set` after the refill left out (the second pass sends
    every job again: fails)."""
    reconciler = make_reconciler(settings.replace(stale_queued_s=86_400))
    reconciler.run_once()  # the reconciler has seen this broker
    # Given a job accepted and published a moment ago, far younger than stale_queued_s
    job_id = alice.post("/v1/jobs", {"model": "digits", "input": pixels(3.0)}).get_json()["id"]
    assert job_id in queued_messages(settings, "online")
    # and a pass that changes nothing while the broker keeps its messages
    assert reconciler.run_once().refilled == 0

    # When the broker loses its data: the lane's queue and the reconciler's marker are gone
    client = redis.Redis.from_url(settings.broker_url or "")
    client.delete(f"{settings.namespace}:{queue_name(settings, 'online')}")
    client.delete(broker_marker_key(settings))
    client.close()
    assert job_id not in queued_messages(settings, "online")
    report = reconciler.run_once()

    # Then one pass publishes it again, at once
    assert report.refilled >= 1 and report.republished >= report.refilled
    assert queued_messages(settings, "online").count(job_id) == 1
    # and the next pass does not publish it a second time
    assert reconciler.run_once().refilled == 0
    assert queued_messages(settings, "online").count(job_id) == 1


def test_a_broker_that_restarted_is_refilled_even_when_it_kept_its_marker(
    alice: Caller, settings: Settings
) -> None:
    """An append-only file keeps the marker but not the last second of messages: a new run
    id is enough. Mutation tried: comparing only whether the marker exists (nothing is
    refilled: fails)."""
    reconciler = make_reconciler(settings.replace(stale_queued_s=86_400))
    reconciler.run_once()
    job_id = alice.post("/v1/jobs", {"model": "digits", "input": pixels(2.0)}).get_json()["id"]
    client = redis.Redis.from_url(settings.broker_url or "")
    client.set(broker_marker_key(settings), "run-id-of-the-server-before-its-restart")
    client.close()

    assert reconciler._refill_after_broker_restart() >= 1
    assert queued_messages(settings, "online").count(job_id) == 2  # the API's, and again
    assert reconciler._refill_after_broker_restart() == 0


def test_the_reconciler_touches_nothing_in_a_redis_another_stack_claimed(
    alice: Caller, settings: Settings
) -> None:
    """Mutation tried: `_check_owner` not called by `run_once` (the pass publishes into the
    other stack's Redis and this test fails)."""
    job_id = alice.post("/v1/jobs", {"model": "digits", "input": pixels(4.0)}).get_json()["id"]
    ours = settings.replace(stale_queued_s=86_400, instance="ours", home=Path("/homes/ours"))
    reconciler = make_reconciler(ours)
    with reconciler.sessions.begin() as session:
        mark_unpublished(session, [uuid.UUID(job_id)])
    client = redis.Redis.from_url(settings.effective_redis_url)
    client.delete(f"{settings.namespace}:{queue_name(settings, 'online')}")  # as published
    client.set(claim_key(settings), Claim("theirs", "/homes/theirs").encode())
    try:
        with pytest.raises(
            ForeignRedis, match=r"theirs \(home /homes/theirs\).*ours \(home /homes/ours\)"
        ):
            reconciler.run_once()
        assert queued_messages(settings, "online").count(job_id) == 0
    finally:
        client.delete(claim_key(settings))
        client.close()
    reconciler.run_once()
    assert queued_messages(settings, "online").count(job_id) == 1


def test_a_refill_claims_the_restarted_redis_and_refuses_another_stacks(
    alice: Caller, settings: Settings
) -> None:
    """A Redis that restarted empty lost the stack's claim, and the pass's own check may have
    run while it was still down (seen in the embedded-Redis fault scenario): the refill
    checks again first. Mutation tried: the refill without `_check_owner` (the claim stays
    missing, and the jobs go into the other stack's Redis: fails)."""
    ours = settings.replace(
        stale_queued_s=86_400, instance="ours", home=Path("/homes/ours"), claim_redis=True
    )
    reconciler = make_reconciler(ours)
    client = redis.Redis.from_url(settings.effective_redis_url)
    try:
        reconciler.run_once()
        assert Claim.decode(client.get(claim_key(settings)) or b"").id == "ours"
        job_id = alice.post("/v1/jobs", {"model": "digits", "input": pixels(5.0)}).get_json()["id"]
        # Given a restart that lost the claim and the marker's run id
        client.delete(claim_key(settings))
        client.set(broker_marker_key(settings), "run-id-of-the-server-before-its-restart")
        # When the refill runs, the stack claims its Redis again before it publishes
        assert reconciler._refill_after_broker_restart() >= 1
        assert Claim.decode(client.get(claim_key(settings)) or b"").id == "ours"

        # Given a restart after which another stack claimed the address
        client.set(claim_key(settings), Claim("theirs", "/homes/theirs").encode())
        client.set(broker_marker_key(settings), "run-id-of-the-server-before-its-restart")
        before = queued_messages(settings, "online").count(job_id)
        # Then the refill publishes nothing into it
        with pytest.raises(ForeignRedis):
            reconciler._refill_after_broker_restart()
        assert queued_messages(settings, "online").count(job_id) == before
    finally:
        client.delete(claim_key(settings))
        client.close()
