"""The worker's batch path on real Postgres and Redis, run in-process."""

from __future__ import annotations

import datetime as dt
import math
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from sqlalchemy import select, text

from api.services import jobs as jobs_service
from db.jobs import JobResult, claim_jobs, requeue_jobs, store_results
from db.tables import Job
from inferq.bench import stages
from inferq.core.broker import make_celery
from inferq.core.messages import Completion
from inferq.core.settings import Settings
from inferq.core.status import completion_channel, status_key
from tests.conftest import Keys
from tests.factories import holdout, pixels
from tests.integration.conftest import Caller
from workers.context import WorkerContext
from workers.runner import run_batch


@pytest.fixture
def ctx(settings: Settings, digits_version: int) -> Iterator[WorkerContext]:
    context = WorkerContext.create(
        settings, f"inproc-{uuid.uuid4().hex[:6]}@test", make_celery(settings)
    )
    yield context
    context.statements.close()
    context.redis.close()


def submit(alice: Caller, body: dict[str, Any]) -> str:
    response = alice.post("/v1/jobs", {"model": "digits", "input": body})
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["id"])


def row(ctx: WorkerContext, job_id: str) -> Job:
    with ctx.sessions() as session:
        return session.scalars(select(Job).where(Job.id == uuid.UUID(job_id))).one()


def test_a_submit_says_where_its_time_went(alice: Caller) -> None:
    """``Server-Timing``: accepted (committed), published, and the whole request."""
    response = alice.post("/v1/jobs", {"model": "digits", "input": holdout(1)[0][0]})
    assert response.status_code == 202
    timing = stages.server_timing(response.headers["Server-Timing"])
    assert list(timing) == ["accept", "publish", "app"]
    assert 0 < timing["accept"] + timing["publish"] <= timing["app"]


def test_a_batch_is_claimed_predicted_and_stored(alice: Caller, ctx: WorkerContext) -> None:
    pairs = holdout(8)
    ids = [submit(alice, p) for p, _ in pairs]
    results = run_batch(ctx, ids)
    assert [r.status for r in results] == ["succeeded"] * 8
    for job_id, (_, label) in zip(ids, pairs, strict=True):
        job = row(ctx, job_id)
        assert job.status == "succeeded" and job.worker == ctx.name and job.attempts == 1
        assert job.batch_size == 8 and job.output is not None and job.output["label"] == label
        assert ctx.redis.get(status_key(ctx.settings, job_id)) == b"succeeded"


def test_the_claim_and_the_store_are_one_round_trip_each(
    alice: Caller, ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's claim and store are single statements that commit themselves: no BEGIN
    before them and no COMMIT after (two round trips of the three a transaction costs, on
    the path of every batch), each on the connection the worker keeps for them (a pool
    checkout and SQLAlchemy's Connection around a claim cost 0.26-0.29 against 0.09-0.10 ms
    of CPU in a loop). Catches: either run in a transaction (tried: the claim in
    ``ctx.sessions.begin()``: left in a transaction, ``INTRANS``), in a session (tried:
    ``one_statement``, since removed), or on a connection checked out for each."""
    import psycopg2.extensions as ext

    import workers.runner as runner
    from db.engine import KeptConnection

    seen: dict[str, tuple[int, bool, int]] = {}

    def watch(name: str, real: Any) -> Any:
        def call(conn: Any, *args: Any, **kwargs: Any) -> Any:
            assert isinstance(conn, KeptConnection), f"the {name} ran in {type(conn).__name__}"
            out = real(conn, *args, **kwargs)
            dbapi = conn._connection().dbapi_connection
            seen[name] = (dbapi.info.transaction_status, dbapi.autocommit, id(dbapi))
            return out

        return call

    monkeypatch.setattr(runner, "claim_jobs", watch("claim", runner.claim_jobs))
    monkeypatch.setattr(runner, "store_results", watch("store", runner.store_results))
    ids = [submit(alice, p) for p, _ in holdout(3)]
    assert [r.status for r in run_batch(ctx, ids)] == ["succeeded"] * 3
    # No transaction open once each statement returned: it committed by itself
    kept = seen["claim"][2]
    assert seen == {"claim": (ext.TRANSACTION_STATUS_IDLE, True, kept),
                    "store": (ext.TRANSACTION_STATUS_IDLE, True, kept)}  # fmt: skip
    # and the next batch runs on the same connection
    more = [submit(alice, p) for p, _ in holdout(5)[3:]]
    assert [r.status for r in run_batch(ctx, more)] == ["succeeded"] * 2
    assert seen["claim"][2] == seen["store"][2] == kept
    # while the pool's other connections stay in transactions, as the rest of the worker uses them
    for _ in range(4):
        with ctx.sessions() as session:
            dbapi = session.connection().connection.dbapi_connection
            assert dbapi is not None and dbapi.autocommit is False and id(dbapi) != kept


def test_a_kept_connection_that_dropped_is_replaced_and_the_batch_runs(
    alice: Caller, ctx: WorkerContext
) -> None:
    """Catches: a worker whose kept connection died (Postgres restarted, an idle timeout)
    failing every batch after, or a failure that is not retried on a fresh connection."""
    first = [submit(alice, p) for p, _ in holdout(1)]
    assert [r.status for r in run_batch(ctx, first)] == ["succeeded"]
    # Given the kept connection's backend ended from outside
    dbapi = ctx.statements._connection().dbapi_connection
    with ctx.sessions() as session:
        session.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dbapi.info.backend_pid})
        session.commit()
    # When the next batch runs, then it succeeds on a new connection
    again = [submit(alice, p) for p, _ in holdout(2)[1:]]
    assert [r.status for r in run_batch(ctx, again)] == ["succeeded"]
    assert ctx.statements._connection().dbapi_connection is not dbapi


def test_a_redelivered_message_changes_nothing(alice: Caller, ctx: WorkerContext) -> None:
    job_id = submit(alice, holdout(1)[0][0])
    run_batch(ctx, [job_id])
    first = row(ctx, job_id)
    assert run_batch(ctx, [job_id]) == []
    again = row(ctx, job_id)
    assert (again.status, again.completed_at, again.attempts, again.output) == (
        first.status,
        first.completed_at,
        first.attempts,
        first.output,
    )


def test_a_bad_item_fails_alone(alice: Caller, ctx: WorkerContext) -> None:
    good = [submit(alice, p) for p, _ in holdout(3)]
    # passes the API's cheap check (PNG signature) but is not a decodable image
    bad = submit(alice, {"image": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"})
    results = {str(r.id): r for r in run_batch(ctx, [*good, bad])}
    assert [results[g].status for g in good] == ["succeeded"] * 3
    assert results[bad].status == "failed"
    failed = row(ctx, bad)
    assert failed.status == "failed" and failed.error is not None
    assert failed.error["type"] == "invalid-input"


def test_an_output_postgres_cannot_store_fails_its_job_alone(
    alice: Caller, ctx: WorkerContext, digits_version: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A user's model may answer NaN, a value JSON cannot write, or a NUL character. Catches:
    one such output failing its whole batch's store (tried: the check removed: the batch
    raised, every job went back to the queue, to fail again until out of attempts)."""
    handler = ctx.runtime.handler(digits_version)
    real = handler.predict
    bad_outputs = [{"score": math.nan}, {"label": {1, 2}}, {"label": "a\x00b"}]

    def predict(items: list[Any]) -> list[Any]:
        return [*bad_outputs, *real(items)[len(bad_outputs) :]]

    monkeypatch.setattr(handler, "predict", predict)
    ids = [submit(alice, p) for p, _ in holdout(4)]

    # When the batch runs
    results = {str(r.id): r for r in run_batch(ctx, ids)}

    # Then each bad output failed its own job, saying why, and the good one succeeded
    why = [results[job_id].error or {} for job_id in ids[:3]]
    assert [e.get("type") for e in why] == ["invalid-output"] * 3
    assert "Out of range float" in why[0]["message"]
    assert "not JSON serializable" in why[1]["message"]
    assert "NUL" in why[2]["message"]
    assert results[ids[3]].status == "succeeded"
    # and every job was stored once, in this batch, none sent back to run again
    stored = [row(ctx, job_id) for job_id in ids]
    assert [job.status for job in stored] == ["failed"] * 3 + ["succeeded"]
    assert [job.attempts for job in stored] == [1] * 4
    assert stored[3].output == results[ids[3]].output


def test_the_store_writes_the_output_text_the_worker_made(
    alice: Caller, ctx: WorkerContext
) -> None:
    """The worker writes each output's JSON once, checking it (workers.runner._succeeded);
    the store sends that text. Catches: the output written a second time (an embedding's
    floats each time), seen here as the text's value stored rather than the object's."""
    job_id = submit(alice, pixels(3.0))
    with ctx.sessions.begin() as session:
        claim_jobs(session, [job_id], "texts@test")
        result = JobResult(
            uuid.UUID(job_id), "succeeded", output={"label": 1}, output_json='{"label": 7}'
        )
        store_results(session, [result], "texts@test")
    assert row(ctx, job_id).output == {"label": 7}


def test_a_job_canceled_while_running_is_discarded(alice: Caller, ctx: WorkerContext) -> None:
    job_id = submit(alice, pixels(3.0))
    with ctx.sessions.begin() as session:
        claim_jobs(session, [job_id], "someone-else@test")
    canceled = alice.post(f"/v1/jobs/{job_id}/cancel").get_json()
    assert canceled["status"] == "running" and canceled["cancel_requested"] is True
    # the owner finishes it: the result is discarded, the job ends canceled
    with ctx.sessions.begin() as session:
        result = JobResult(uuid.UUID(job_id), "succeeded", output={"label": 1})
        stored = store_results(session, [result], "someone-else@test")
    assert [s.status for s in stored] == ["canceled"]
    job = row(ctx, job_id)
    assert job.status == "canceled" and job.output is None


def test_a_canceled_queued_job_never_runs(alice: Caller, ctx: WorkerContext) -> None:
    job_id = submit(alice, pixels(2.0))
    assert alice.post(f"/v1/jobs/{job_id}/cancel").get_json()["status"] == "canceled"
    assert run_batch(ctx, [job_id]) == []
    job = row(ctx, job_id)
    assert job.status == "canceled" and job.started_at is None and job.attempts == 0
    # canceling again is harmless; canceling a finished job is a conflict
    assert alice.post(f"/v1/jobs/{job_id}/cancel").status_code == 200
    done = submit(alice, pixels(2.0))
    run_batch(ctx, [done])
    assert alice.post(f"/v1/jobs/{done}/cancel").status_code == 409


def test_a_job_that_keeps_failing_its_worker_is_failed_after_max_attempts(
    alice: Caller, ctx: WorkerContext
) -> None:
    job_id = submit(alice, pixels(4.0))
    for attempt in range(ctx.settings.worker.max_attempts):  # each claim is a worker that then died
        with ctx.sessions.begin() as session:
            assert claim_jobs(session, [job_id], f"dead-{attempt}@test")
            requeue_jobs(session, [uuid.UUID(job_id)], f"dead-{attempt}@test")
    (result,) = run_batch(ctx, [job_id])
    assert result.status == "failed" and result.error is not None
    assert result.error["type"] == "attempts-exhausted"
    assert row(ctx, job_id).attempts == ctx.settings.worker.max_attempts + 1


def test_malformed_ids_in_a_message_are_dropped(ctx: WorkerContext) -> None:
    assert run_batch(ctx, ["not-a-uuid", 42, None]) == []


def test_completions_are_published_once_per_batch(alice: Caller, ctx: WorkerContext) -> None:
    ids = [submit(alice, p) for p, _ in holdout(5)]
    listener = redis.Redis.from_url(ctx.settings.effective_redis_url).pubsub(
        ignore_subscribe_messages=True
    )
    listener.subscribe(completion_channel(ctx.settings))
    listener.get_message(timeout=1)
    run_batch(ctx, ids)
    messages = []
    while (message := listener.get_message(timeout=1)) is not None:
        messages.append(message)
    listener.close()
    assert len(messages) == 1
    assert set(Completion.decode(messages[0]["data"]).job_ids) == set(ids)


def test_long_poll_wakes_on_completion(alice: Caller, ctx: WorkerContext) -> None:
    job_id = submit(alice, holdout(1)[0][0])
    timer = threading.Timer(0.5, run_batch, args=(ctx, [job_id]))
    started = time.monotonic()
    timer.start()
    response = alice.get(f"/v1/jobs/{job_id}?wait=20")
    elapsed = time.monotonic() - started
    timer.join()
    body = response.get_json()
    assert body["status"] == "succeeded"
    # woken by the signal, not by the 20 s timeout (generous: it is a signal, not a sleep)
    assert elapsed < 10, elapsed
    assert jobs_service.query_wait("5", 30) == 5


def test_a_woken_long_poll_answers_from_the_workers_fields_without_reading_postgres(
    alice: Caller, ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a long-poll that has read its queued job once
    job_id = submit(alice, holdout(1)[0][0])
    reads: list[str] = []
    real_load = jobs_service.load

    def counting_load(*args: Any, **kwargs: Any) -> Any:
        reads.append(str(args[1]))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(jobs_service, "load", counting_load)
    fetched = {job_id: time.time()}  # when its message reached the worker
    timer = threading.Timer(0.5, run_batch, args=(ctx, [job_id]), kwargs={"fetched": fetched})
    timer.start()
    # When the worker finishes it
    answer = alice.get(f"/v1/jobs/{job_id}?wait=20")
    woken = answer.get_json()
    timer.join()
    # Then the answer came from the completion signal: no read at all (the wait started from
    # the view the submit kept, api.services.recent), none after
    assert reads == []
    # with the time the worker received the job (the worker's fields carry it too)
    assert dt.datetime.fromisoformat(woken["fetched_at"]).timestamp() == pytest.approx(
        fetched[job_id], abs=1e-3
    )
    steps = [entry.split(";")[0] for entry in answer.headers["Server-Timing"].split(", ")]
    assert steps == ["read", "wait", "app"]
    # and it is the same job a fresh read returns
    fresh = alice.get(f"/v1/jobs/{job_id}").get_json()
    for volatile in ("position", "eta_s", "stuck"):
        woken.pop(volatile, None), fresh.pop(volatile, None)
    assert woken["status"] == "succeeded" and woken == fresh


def test_incomplete_completion_fields_fall_back_to_a_read() -> None:
    assert jobs_service.with_final_fields(None, {"status": "succeeded"}) is None  # type: ignore[arg-type]
    assert jobs_service.with_final_fields(None, None) is None  # type: ignore[arg-type]
    partial = dict.fromkeys(jobs_service.FINAL_FIELDS) | {"status": "running"}
    assert jobs_service.with_final_fields(None, partial) is None  # type: ignore[arg-type]
    garbled = dict.fromkeys(jobs_service.FINAL_FIELDS) | {
        "status": "succeeded",
        "started_at": "yesterday",
    }
    assert jobs_service.with_final_fields(None, garbled) is None  # type: ignore[arg-type]


def test_the_cache_answers_a_repeated_input_without_a_worker(
    settings: Settings, digits_version: int, keys: Keys
) -> None:

    from api.app import create_app

    cached_settings = settings.replace(cache_ttl_s=60)
    alice = Caller(create_app(cached_settings).test_client(), keys.alice)
    ctx = WorkerContext.create(cached_settings, "cache-filler@test", make_celery(cached_settings))
    # Given an input a worker has answered once
    body = {"pixels": [float(v) for v in range(64)][::-1]}
    body["pixels"] = [min(16.0, v / 4) for v in body["pixels"]]
    first = submit(alice, body)
    run_batch(ctx, [first])
    original = row(ctx, first)
    # When the same input (as integers this time) is submitted again
    again = alice.post(
        "/v1/jobs",
        {
            "model": "digits",
            "input": {"pixels": [int(v) if v.is_integer() else v for v in body["pixels"]]},
        },
    )
    # Then it is answered at once from the cache: 200, succeeded, never queued for a worker
    assert again.status_code == 200
    job = again.get_json()
    assert job["status"] == "succeeded" and job["cached"] is True
    assert job["output"] == original.output
    assert job["worker"] is None and job["attempts"] == 0
    assert run_batch(ctx, [job["id"]]) == []  # nothing for a worker to claim
    # and a different input is not
    other = alice.post("/v1/jobs", {"model": "digits", "input": {"pixels": [1.0] * 64}})
    assert other.status_code == 202 and other.get_json()["cached"] is False


def _full_reads(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ids of every whole-job read the long-poll code makes from now on."""
    reads: list[str] = []
    real_load = jobs_service.load

    def counting_load(*args: Any, **kwargs: Any) -> Any:
        reads.append(str(args[1]))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(jobs_service, "load", counting_load)
    return reads


def test_a_long_poll_that_times_out_shows_what_changed_without_reading_the_job_again(
    alice: Caller, ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A wait that runs out (no completion) reads five columns, not the whole job again: the
    largest cost of a long-poll on a parked job. Mutations caught: ``refresh`` answering the
    view from before the wait unchanged (status still "queued"), or reading the job whole
    when the wait ends."""
    # Given a queued job, and a long-poll of 1 s on it
    job_id = submit(alice, holdout(1)[0][0])
    reads = _full_reads(monkeypatch)

    def start_it() -> None:  # a worker claims it, and has not finished it when the wait ends
        with ctx.sessions.begin() as session:
            claim_jobs(session, [job_id], "slow-worker@test")

    timer = threading.Timer(0.3, start_it)
    timer.start()
    # When the wait runs out
    body = alice.get(f"/v1/jobs/{job_id}?wait=1").get_json()
    timer.join()

    # Then the answer shows the job running on that worker, and the rest of it as it was
    assert body["status"] == "running" and body["worker"] == "slow-worker@test"
    assert body["attempts"] == 1 and body["started_at"] is not None
    assert body["input"] == holdout(1)[0][0] and body["output"] is None
    # never read whole: the wait started from the view the submit kept, and ended with the
    # five columns
    assert reads == []


def test_a_job_that_finished_without_a_signal_is_read_whole_when_the_wait_ends(
    alice: Caller, ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mutation caught: ``refresh`` setting only the five columns on a job found finished (the
    answer would say "succeeded" with no output)."""
    # Given a long-poll on a queued job
    job_id = submit(alice, holdout(1)[0][0])
    reads = _full_reads(monkeypatch)

    def finish_silently() -> None:  # stored, but its completion signal never arrives
        with ctx.sessions.begin() as session:
            claim_jobs(session, [job_id], "quiet-worker@test")
        result = JobResult(uuid.UUID(job_id), "succeeded", output={"label": 7})
        with ctx.sessions.begin() as session:
            store_results(session, [result], "quiet-worker@test")

    timer = threading.Timer(0.3, finish_silently)
    timer.start()
    # When its wait runs out
    body = alice.get(f"/v1/jobs/{job_id}?wait=1").get_json()
    timer.join()

    # Then it answers the finished job whole
    assert body["status"] == "succeeded" and body["output"] == {"label": 7}
    assert body["completed_at"] is not None
    assert reads == [job_id]  # when the wait ended (it started from the submit's view)
