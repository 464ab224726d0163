"""Reads that must not cost the size of a backlog or of the jobs table.

A job's position is counted up to a bound and estimated past it: counting every queued job
ahead made each read of a job cost the depth of its queue (with 100,000 batch jobs queued,
a GET took 60-70 ms of Postgres, a long-poll twice that). The ETA's worker time per job
looks at the latest finished jobs only, and the reconciler's expiry at queued jobs with a
deadline only.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import text
from sqlalchemy.orm import Session

from api.services import position as whereis
from db import jobs as job_rows
from db.engine import make_engine
from db.jobs import get_job_view, get_jobs_progress
from db.stats import ahead_by_model, seconds_per_job
from inferq.cli.common import db_session
from inferq.core.settings import Settings
from tests.factories import pixels
from tests.integration.conftest import Caller

UNCAPPED = text(
    "SELECT count(*) FROM jobs j, jobs e WHERE j.id = :id AND e.status = 'queued' "
    "AND e.lane = j.lane AND e.created_at < j.created_at"
)
QUEUED = text("SELECT count(*) FROM jobs WHERE status = 'queued' AND lane = 'batch'")


def submit_batch_lane(alice: Caller, value: float) -> str:
    body = {"model": "digits", "input": pixels(value), "lane": "batch"}
    response = alice.post("/v1/jobs", body)
    assert response.status_code == 202, response.get_json()
    return str(response.get_json()["id"])


def test_the_jobs_ahead_are_counted_up_to_a_bound_and_estimated_past_it(
    alice: Caller, settings: Settings, digits_version: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: a read that counts the whole backlog ahead (its cost growing with the queue),
    a count past the bound reported as exact, or an estimate outside what is known."""
    monkeypatch.setattr(whereis, "LANE_CACHE_S", 0.0)
    # Given a bound ten jobs past whatever the batch lane already holds
    probe = submit_batch_lane(alice, 0.0)
    with db_session(settings) as session:
        before = session.scalar(UNCAPPED, {"id": uuid.UUID(probe)})
    bound = before + 10
    monkeypatch.setattr(job_rows, "AHEAD_COUNTED_UP_TO", bound)

    # When forty more jobs queue behind it
    ids = []
    for n in range(40):
        ids.append(submit_batch_lane(alice, float(n % 16)))
        time.sleep(0.005)
    answers = [alice.get(f"/v1/jobs/{i}").get_json() for i in ids]
    with db_session(settings) as session:
        truths = [session.scalar(UNCAPPED, {"id": uuid.UUID(i)}) for i in ids]
        queued = session.scalar(QUEUED)
        tenant = session.scalar(text("SELECT tenant_id FROM jobs WHERE id = :id"), {"id": ids[0]})
        views = [get_job_view(session, uuid.UUID(i), tenant, with_ahead=True) for i in ids]
        progress = get_jobs_progress(session, [uuid.UUID(ids[-1])])[uuid.UUID(ids[-1])][1]
        deepest = views[-1]
        assert deepest is not None and progress is not None and progress.ahead is not None
        separate = ahead_by_model(session, "batch", deepest.job.created_at)

    # Then a job with fewer than the bound ahead has its exact count
    near = [(a, t) for a, t in zip(answers, truths, strict=True) if t < bound]
    deep = [(a, t) for a, t in zip(answers, truths, strict=True) if t >= bound]
    assert len(near) >= 9 and len(deep) >= 29
    assert all(a["position_exact"] is True and a["position"] == t for a, t in near)
    # and past it the read counts only the bound's worth, and says the position is estimated
    counted = [sum(v.ahead.values()) for v in views if v is not None and v.ahead is not None]
    assert counted == [min(t, bound) for t in truths]
    assert sum(progress.ahead.values()) == bound
    assert sum(separate.values()) == bound
    assert all(a["position_exact"] is False for a, _ in deep)
    assert all(bound <= a["position"] <= queued - 1 for a, _ in deep)
    positions = [a["position"] for a in answers]
    assert positions == sorted(positions)

    # And a long-poll whose wait ran out says the same of the deepest job
    polled = alice.get(f"/v1/jobs/{ids[-1]}?wait=0.05").get_json()
    assert polled["status"] == "queued" and polled["position_exact"] is False
    assert bound <= polled["position"] <= queued - 1


def test_a_jobs_read_leaves_the_count_ahead_to_a_function_whose_plan_is_kept(
    alice: Caller, settings: Settings, digits_version: int
) -> None:
    """Catches: the count of the jobs ahead written into the job's read as a subquery, which
    Postgres plans again on every read over every partition of ``jobs`` (0.8 ms of planning
    per GET or expired long-poll, against 0.15 ms of work)."""
    # Given a queued job with jobs queued ahead of it
    for n in range(3):
        submit_batch_lane(alice, float(n))
    job_id = uuid.UUID(submit_batch_lane(alice, 9.0))
    engine = make_engine(settings.require_database_url(), pool_size=1)
    with Session(engine) as session:
        tenant, home = session.execute(
            text("SELECT tenant_id, tableoid::regclass::text FROM jobs WHERE id = :id"),
            {"id": job_id},
        ).one()
        by_time, params = job_rows._job_params(job_id, tenant)
        # (a long-poll's progress read has the same column: db.jobs._ahead)
        for statement in (job_rows._view_statement(True, by_time),):
            compiled = statement.compile(dialect=engine.dialect)
            sql = compiled.string % {name: f"%({name})s" for name in compiled.params}
            raw = session.connection().connection.dbapi_connection
            assert raw is not None
            with raw.cursor() as cursor:
                cursor.execute("EXPLAIN (FORMAT JSON) " + sql, {**compiled.params, **params})
                plan = cursor.fetchone()[0]

            # When Postgres plans the read, then it scans one partition of jobs: the job's own
            nodes = list(walk(plan[0]["Plan"]))
            scanned = [n["Relation Name"] for n in nodes if "Relation Name" in n]
            assert [r for r in scanned if r.startswith("jobs")] == [home], scanned
        # and the count it calls is the exact one
        view = get_job_view(session, job_id, tenant, with_ahead=True)
        assert view is not None and view.ahead is not None
        assert sum(view.ahead.values()) == session.scalar(UNCAPPED, {"id": job_id})
    engine.dispose()


def test_a_lanes_worker_time_is_read_from_the_latest_finished_jobs_only(
    alice: Caller, settings: Settings, digits_version: int
) -> None:
    """Catches: the ETA's worker time per job read over every job that finished in the last
    hour (a whole-table scan each time, as a condition on the volatile clock_timestamp()
    made it): only the latest ``scan`` finished jobs are looked at."""
    template = submit_batch_lane(alice, 1.0)
    copy = text(
        "INSERT INTO jobs (id, created_at, tenant_id, model_id, version_id, lane, status, input,"
        " cached, cancel_requested, attempts, batch_size, started_at, completed_at)"
        " SELECT gen_random_uuid(), j.created_at, j.tenant_id, j.model_id, j.version_id, :lane,"
        " 'succeeded', j.input, false, false, 1, 1,"
        " now() + make_interval(secs => :at) - interval '10 milliseconds',"
        " now() + make_interval(secs => :at)"
        " FROM jobs j, generate_series(1, :n) WHERE j.id = :id"
    )
    engine = make_engine(settings.require_database_url(), pool_size=1)
    decade = 10 * 365 * 86_400  # later than any job another test left: these are the latest
    with Session(engine) as session:  # closed without a commit: nothing stays
        # Given five batch jobs that took 10 ms each, then thirty online jobs finished after
        session.execute(copy, {"lane": "batch", "at": decade, "n": 5, "id": template})
        session.execute(copy, {"lane": "online", "at": 2 * decade, "n": 30, "id": template})

        # Then the batch lane's time shows among the latest 100 finished jobs, not the latest 20
        found = seconds_per_job(session, "batch", sample=5, scan=100)
        assert found is not None and found == pytest.approx(0.010, abs=0.001)
        assert seconds_per_job(session, "batch", sample=5, scan=20) is None
    engine.dispose()


def test_the_reconcilers_expiry_looks_only_at_queued_jobs_with_a_deadline(
    alice: Caller, settings: Settings, digits_version: int
) -> None:
    """Catches: the pass that fails queued jobs past their Cancel-After reading every queued
    job (0.2 s a pass, every 5 s, with 100,000 queued)."""
    # Given queued jobs without a deadline, and one with a deadline that passed
    for n in range(20):
        submit_batch_lane(alice, float(n % 16))
    late = alice.post(
        "/v1/jobs",
        {"model": "digits", "input": pixels(3.0), "lane": "batch"},
        headers={"Cancel-After": "0.05"},
    ).get_json()["id"]
    time.sleep(0.1)
    engine = make_engine(settings.require_database_url(), pool_size=1)
    with Session(engine) as session:  # closed without a commit: nothing stays
        session.execute(text("ANALYZE jobs"))  # the planner knows how few have a deadline
        session.execute(text("SET LOCAL enable_seqscan = off"))
        sql = str(job_rows._EXPIRE)
        plan = session.execute(text("EXPLAIN (ANALYZE, FORMAT JSON) " + sql)).scalar_one()

        # When the expiry runs, then it reads the deadline index, and no row it has to drop
        nodes = list(walk(plan[0]["Plan"]))
        scans = [n for n in nodes if "Scan" in n["Node Type"] and "Relation Name" in n]
        assert any("expires_at" in n.get("Index Name", "") for n in scans), scans
        assert sum(n.get("Rows Removed by Filter", 0) for n in nodes) == 0
        # and the job past its deadline is failed by it (EXPLAIN ANALYZE ran it)
        status = text("SELECT status FROM jobs WHERE id = :id")
        assert session.execute(status, {"id": late}).scalar_one() == "failed"
    engine.dispose()


def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from walk(child)


def test_a_models_missing_time_per_job_is_read_again_after_a_second_however_slow_the_read(
    app: Flask, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: a model with no time per job yet (its first jobs still running) kept without
    one for as long as a slow read made the lane figures keep theirs (50 times the read): its
    ETA went on using the lane's, another model's, well after its own jobs had run."""
    monkeypatch.setattr(whereis, "LANE_CACHE_S", 0.2)
    answers = iter([None, 0.5])

    def slow_read(*_: Any) -> float | None:
        time.sleep(0.06)  # kept 50 times that under the lane figures' busy share: 3 s
        return next(answers)

    monkeypatch.setattr(whereis, "seconds_per_job", slow_read)
    st = app.extensions["inferq"]
    with app.app_context():
        # Given a model whose time per job was read before any of its jobs finished
        assert whereis.model_seconds(st, "interactive", 1) is None
        # When its jobs have run and the cache's second is up
        time.sleep(0.3)
        # Then its own time per job is read
        assert whereis.model_seconds(st, "interactive", 1) == 0.5
