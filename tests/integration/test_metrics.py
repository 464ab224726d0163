"""Metrics of the API, a worker and the scheduler, in-process on the real Postgres and Redis;
the stats endpoint; where a job is (position, ETA, why it is stuck)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from sqlalchemy import select

from api.app import create_app
from api.services import position as whereis
from db.jobs import claim_jobs, fail_jobs, get_job_view, get_jobs_progress
from db.stats import ahead_by_model
from db.tables import Job
from inferq.cli.common import db_session
from inferq.core.broker import make_celery
from inferq.core.metrics import sample_names
from inferq.core.settings import Settings
from inferq.core.status import remove_beat, write_beat
from scheduler.metrics import Observer
from scheduler.reconciler import ReconcileReport
from scheduler.service import make_reconciler
from tests.conftest import Keys
from tests.factories import holdout, same_artifact_version
from tests.integration.conftest import Caller
from tests.prometheus import Scrape
from workers.context import WorkerContext
from workers.runner import run_batch


@pytest.fixture
def ctx(settings: Settings, digits_version: int) -> Iterator[WorkerContext]:
    context = WorkerContext.create(
        settings, f"metrics-{uuid.uuid4().hex[:6]}@test", make_celery(settings)
    )
    yield context
    close(context)


def close(context: WorkerContext) -> None:
    """Give back the context's connections (the suite shares one Postgres)."""
    context.redis.close()
    context.sessions.kw["bind"].dispose()


@pytest.fixture
def observer(settings: Settings) -> Iterator[Observer]:
    """The scheduler's metrics, on its own connections, given back afterwards."""
    found = Observer(make_reconciler(settings))
    yield found
    found.reconciler.sessions.kw["bind"].dispose()
    found.reconciler.redis.close()


@pytest.fixture
def beats(settings: Settings) -> Iterator[Any]:
    """Fake worker heartbeats: ``beat(name, lanes, consuming)``; removed afterwards."""
    client = redis.Redis.from_url(settings.effective_redis_url)
    made: list[str] = []

    def beat(name: str, lanes: list[str], consuming: bool = True) -> None:
        body = {"name": name, "lanes": lanes, "consuming": consuming, "started_at": 0}
        write_beat(client, settings, name, json.dumps(body), 60_000)
        made.append(name)

    yield beat
    for name in made:
        remove_beat(client, settings, name)
    client.close()


def new_model(settings: Settings, holdout_accuracy: float = 0.97) -> str:
    """A model of its own (digits' weights), so its numbers are this test's alone."""
    from db.registry import ensure_model, get_model, loadable_version
    from workers.handlers.digits import DigitsHandler

    name = f"m-{uuid.uuid4().hex[:8]}"
    with db_session(settings) as session:
        digits = get_model(session, "digits")
        assert digits is not None and digits.active_version_id is not None
        weights = loadable_version(session, digits.active_version_id)
        assert weights is not None
        model = ensure_model(
            session, name, "digits", DigitsHandler.input_schema, {}, DigitsHandler.label_schema
        )
        same_artifact_version(
            session, model, weights, metrics={"holdout_accuracy": holdout_accuracy}, activate=True
        )
    return name


def submit(caller: Caller, inputs: list[dict[str, Any]], model: str = "digits") -> list[str]:
    ids = []
    for body in inputs:
        response = caller.post("/v1/jobs", {"model": model, "input": body})
        assert response.status_code == 202, response.get_json()
        ids.append(str(response.get_json()["id"]))
    return ids


def scrape(app: Flask) -> Scrape:
    response = app.test_client().get("/metrics")
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    return Scrape.parse(response.get_data(as_text=True))


def test_the_api_counts_requests_by_route_and_status_and_submits_by_model(
    app: Flask, alice: Caller
) -> None:
    # Given five submits, a read of one job and a request to no route
    ids = submit(alice, [p for p, _ in holdout(5)])
    assert alice.get(f"/v1/jobs/{ids[0]}").status_code == 200
    assert alice.get("/v1/nothing-here").status_code == 404

    # When /metrics is scraped
    found = scrape(app)

    # Then the counters moved by exactly those amounts, under route templates
    total = "inferq_http_requests_total"
    assert found.value("inferq_jobs_submitted_total", model="digits", lane="online") == 5
    assert found.value(total, method="POST", route="/v1/jobs", status="202") == 5
    assert found.value(total, method="GET", route="/v1/jobs/<job_id>", status="200") == 1
    assert found.value(total, method="GET", route="unmatched", status="404") == 1
    latency = "inferq_http_request_duration_seconds_count"
    assert found.value(latency, method="POST", route="/v1/jobs") == 5
    assert found.value("inferq_http_requests_in_progress") == 1  # the scrape itself
    # and no job id became a label value
    assert not any(job_id in found.text for job_id in ids)


def test_a_worker_counts_its_jobs_waits_batches_failures_and_model_loads(
    alice: Caller, ctx: WorkerContext
) -> None:
    # Given six good jobs and one whose input fails in the worker
    good = submit(alice, [p for p, _ in holdout(6)])
    bad = submit(alice, [{"image": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"}])

    # When the worker runs them as one batch
    run_batch(ctx, [*good, *bad])

    # Then its registry says so
    found = Scrape.parse(_text(ctx.metrics.registry))
    assert found.value("inferq_worker_jobs_total", model="digits", status="succeeded") == 6
    assert found.value("inferq_worker_jobs_total", model="digits", status="failed") == 1
    assert (
        found.value("inferq_worker_job_failures_total", model="digits", reason="invalid-input") == 1
    )
    assert found.value("inferq_worker_queue_wait_seconds_count", model="digits") == 7
    assert found.value("inferq_worker_predict_seconds_count", model="digits") == 1
    assert found.value("inferq_worker_batch_size_sum", model="digits") == 6
    assert found.value("inferq_worker_model_load_seconds_count", model="digits") == 1
    assert found.value("inferq_worker_last_batch_timestamp_seconds") > 0


def test_submits_answered_from_the_cache_count_as_hits(
    settings: Settings, keys: Keys, digits_version: int
) -> None:
    cached = settings.replace(cache_ttl_s=60)
    app = create_app(cached)
    alice = Caller(app.test_client(), keys.alice)
    ctx = WorkerContext.create(cached, "metrics-cache@test", make_celery(cached))
    body = {"pixels": [float((i * 7) % 17) for i in range(64)]}
    run_batch(ctx, submit(alice, [body]))
    close(ctx)
    again = alice.post("/v1/jobs", {"model": "digits", "input": body})
    assert again.status_code == 200 and again.get_json()["cached"] is True
    found = scrape(app)
    assert found.value("inferq_jobs_submitted_total", model="digits") == 2
    assert found.value("inferq_result_cache_hits_total", model="digits") == 1


def test_the_scheduler_measures_queues_workers_dependencies_and_the_reconciler(
    observer: Observer, alice: Caller, beats: Any
) -> None:
    observer.collect()
    before = Scrape.parse(_text(observer.metrics.registry))

    # Given three more queued jobs, a consuming and a stalled worker on the training lane
    submit(alice, [p for p, _ in holdout(3)])
    beats(f"live-{uuid.uuid4().hex[:6]}", ["training"], consuming=True)
    beats(f"stuck-{uuid.uuid4().hex[:6]}", ["training"], consuming=False)
    # and a reconciler pass that did something, and one that failed
    observer.reconciled(ReconcileReport(requeued=2, republished=3, expired=1))
    observer.reconciled(None)

    observer.collect()
    after = Scrape.parse(_text(observer.metrics.registry))

    def delta(name: str, **labels: str) -> float:
        return after.value(name, **labels) - before.value(name, **labels)

    assert delta("inferq_queue_depth", lane="online") == 3
    assert after.value("inferq_queue_oldest_job_age_seconds", lane="online") > 0
    assert delta("inferq_workers_live", lane="training") == 1
    assert delta("inferq_workers_stalled", lane="training") == 1
    for dependency in ("database", "redis", "broker"):
        assert after.value("inferq_dependency_up", dependency=dependency) == 1
    assert after.value("inferq_reconciler_jobs_total", action="requeued") == 2
    assert after.value("inferq_reconciler_jobs_total", action="republished") == 3
    assert after.value("inferq_reconciler_jobs_total", action="expired") == 1
    assert after.value("inferq_reconciler_passes_total", outcome="error") == 1


def test_a_dependency_that_does_not_answer_is_reported_down(settings: Settings) -> None:
    dead = settings.replace(redis_url="redis://127.0.0.1:1/0")
    reconciler = make_reconciler(dead)
    reconciler.redis = redis.Redis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=0.5)
    observer = Observer(reconciler)
    observer.collect()
    reconciler.sessions.kw["bind"].dispose()
    found = Scrape.parse(_text(observer.metrics.registry))
    assert found.value("inferq_dependency_up", dependency="redis") == 0
    assert found.value("inferq_dependency_up", dependency="database") == 1


def judged_model(
    settings: Settings, alice: Caller, ctx: WorkerContext, right: int, wrong: int
) -> str:
    """A fresh model whose jobs got ``right`` agreeing and ``wrong`` disagreeing labels."""
    model = new_model(settings)
    ids = submit(alice, [p for p, _ in holdout(right + wrong)], model=model)
    run_batch(ctx, ids)
    for n, job_id in enumerate(ids):
        label = alice.get(f"/v1/jobs/{job_id}").get_json()["output"]["label"]
        truth = label if n < right else (label + 1) % 10
        assert alice.post(f"/v1/jobs/{job_id}/feedback", {"label": truth}).status_code == 201
    return model


def test_the_scheduler_exports_live_accuracy_from_feedback(
    settings: Settings, alice: Caller, ctx: WorkerContext, observer: Observer
) -> None:
    # Given a model whose 10 judged jobs were right 7 times
    model = judged_model(settings, alice, ctx, right=7, wrong=3)

    # When the scheduler measures
    observer.collect()
    found = Scrape.parse(_text(observer.metrics.registry))

    # Then accuracy, its n and the holdout accuracy are there for the active version
    assert found.value("inferq_model_feedback_accuracy", model=model, version="1") == pytest.approx(
        0.7
    )
    assert found.value("inferq_model_feedback_judged", model=model, version="1") == 10
    assert found.value("inferq_model_holdout_accuracy", model=model, version="1") == pytest.approx(
        0.97
    )


def test_every_metric_the_rules_use_is_in_a_real_scrape(
    app: Flask, alice: Caller, ctx: WorkerContext, observer: Observer
) -> None:
    from tests.prometheus import rule_expressions
    from tests.unit.test_prometheus_rules import BUILTIN, recorded, used_metrics

    run_batch(ctx, submit(alice, [p for p, _ in holdout(2)]))
    observer.collect()
    exported = (
        scrape(app).names()
        | sample_names(ctx.metrics.registry)
        | sample_names(observer.metrics.registry)
    )
    assert used_metrics(rule_expressions()) - exported - recorded() - BUILTIN == set()


def test_stats_for_the_dashboard(
    http: Any, operator: Caller, alice: Caller, ctx: WorkerContext, settings: Settings, beats: Any
) -> None:
    from db.registry import get_model
    from db.scaling import record_decision
    from db.training import open_run

    model = judged_model(settings, alice, ctx, right=3, wrong=1)
    with db_session(settings) as session:
        found = get_model(session, model)
        assert found is not None
        run = open_run(
            session, found.id, trigger="manual", requested_by="tests", stale_after_s=3600
        )
        assert run is not None
        run_id = str(run.id)
    beats(f"dash-{uuid.uuid4().hex[:6]}", ["online"])
    pool = f"pool-{uuid.uuid4().hex[:6]}"
    with db_session(settings) as session:
        record_decision(
            session, pool=pool, backend="dry-run", current=1, desired=3, direction="up",
            reason="test", inputs={},
        )  # fmt: skip

    assert alice.get("/v1/stats").status_code == 403  # operators only
    assert operator.get("/v1/stats?window=5").status_code == 400
    stats = operator.get("/v1/stats?window=600").get_json()

    assert stats["window_s"] == 600
    assert stats["jobs"]["finished"] >= 4 and stats["jobs"]["succeeded"] >= 4
    assert stats["jobs"]["throughput_per_s"] == pytest.approx(
        stats["jobs"]["finished"] / 600, abs=1e-4
    )
    assert stats["latency_ms"]["p50"] is not None
    assert [lane["lane"] for lane in stats["lanes"]] == [
        "online",
        "batch",
        "training",
        "webhooks",
        "maintenance",
    ]
    assert stats["workers"]["live"] >= 1 and stats["workers"]["desired"] >= 3
    mine_pool = next(p for p in stats["workers"]["pools"] if p["pool"] == pool)
    assert (mine_pool["current"], mine_pool["desired"]) == (1, 3)
    points = stats["timeline"]["points"]
    assert stats["timeline"]["bucket_s"] == 15 and 40 <= len(points) <= 42
    assert sum(p["finished"] for p in points) >= stats["jobs"]["finished"] - 1
    mine = next(q for q in stats["quality"] if q["model"] == model)
    assert mine == {
        "model": model,
        "version": 1,
        "holdout_accuracy": 0.97,
        "judged": 4,
        "accuracy": 0.75,
    }
    assert any(v["model"] == model for v in stats["recent_versions"])
    mine_run = next(r for r in stats["training_runs"] if r["id"] == run_id)
    assert (mine_run["model"], mine_run["status"], mine_run["trigger"]) == (
        model,
        "queued",
        "manual",
    )


def test_the_dashboard_page_is_served_with_a_strict_policy(http: Any) -> None:
    with http.get("/dashboard") as page:
        assert page.status_code == 200 and page.mimetype == "text/html"
        assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    for asset in ("dashboard.js", "dashboard.css"):
        with http.get(f"/dashboard/static/{asset}") as response:
            assert response.status_code == 200


def test_a_queued_job_has_its_position_and_why_it_is_stuck(
    alice: Caller, ctx: WorkerContext, beats: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(whereis, "LANE_CACHE_S", 0.0)
    # The lane was served lately (the worker time per job is known)
    run_batch(ctx, submit(alice, [p for p, _ in holdout(4)]))
    ids = submit(alice, [p for p, _ in holdout(3)])
    first, second, third = (alice.get(f"/v1/jobs/{i}").get_json() for i in ids)

    # No worker consumes the online lane: positions, no ETA, and the reason
    assert [second["position"] - first["position"], third["position"] - first["position"]] == [1, 2]
    assert first["eta_s"] is None
    assert first["stuck"]["reason"] == "no-live-worker"

    # A worker that stopped consuming
    beats(f"stalled-{uuid.uuid4().hex[:6]}", ["online"], consuming=False)
    assert alice.get(f"/v1/jobs/{ids[0]}").get_json()["stuck"]["reason"] == "workers-not-consuming"

    # A consuming worker: an ETA that grows with the position, and nothing stuck
    beats(f"live-{uuid.uuid4().hex[:6]}", ["online"])
    first, third = (alice.get(f"/v1/jobs/{i}").get_json() for i in (ids[0], ids[2]))
    assert first["stuck"] is None
    assert 0 < first["eta_s"] <= third["eta_s"]


def test_the_position_read_with_the_job_counts_what_a_separate_count_counts(
    alice: Caller, settings: Settings
) -> None:
    """A plain GET reads the jobs ahead in the job's own statement, and a long-poll whose wait
    ran out in its progress read: both agree with the separate count (``ahead_by_model``)
    the position was computed from before, and a running job has none. (Checked against
    ``created_at <=`` in ``db.jobs._ahead``: every position one too high, and this fails.)"""
    ids = submit(alice, [p for p, _ in holdout(3)])
    with db_session(settings) as session:
        tenant = session.scalars(select(Job.tenant_id).where(Job.id == uuid.UUID(ids[0]))).one()
        views = [get_job_view(session, uuid.UUID(i), tenant) for i in ids]
        counted = [ahead_by_model(session, v.job.lane, v.job.created_at) for v in views if v]
        read = [get_job_view(session, uuid.UUID(i), tenant, with_ahead=True) for i in ids]
        found = get_jobs_progress(session, [uuid.UUID(i) for i in ids])
        progress = [found[uuid.UUID(i)][1] for i in ids]
    assert {owner for owner, _ in found.values()} == {tenant}
    assert [v.ahead for v in views if v] == [None, None, None]  # not asked for
    assert [v.ahead for v in read if v] == counted
    assert [p.ahead for p in progress if p] == counted
    expected = [sum(c.values()) for c in counted]
    assert expected[1:] == [expected[0] + 1, expected[0] + 2]
    assert [alice.get(f"/v1/jobs/{i}").get_json()["position"] for i in ids] == expected
    polled = [alice.get(f"/v1/jobs/{i}?wait=0.05").get_json() for i in ids]
    assert [(j["status"], j["position"]) for j in polled] == [("queued", n) for n in expected]

    with db_session(settings) as session:
        claim_jobs(session, [ids[0]], "someone@somewhere")
        running = get_job_view(session, uuid.UUID(ids[0]), tenant, with_ahead=True)
        still = get_jobs_progress(session, [uuid.UUID(ids[0])])[uuid.UUID(ids[0])][1]
    assert running is not None and running.job.status == "running" and running.ahead is None
    assert still is not None and still.ahead is None
    with db_session(settings) as session:
        fail_jobs(session, [uuid.UUID(j) for j in ids], {"type": "test", "message": "done"})


def test_a_running_job_whose_worker_died_says_so(alice: Caller, settings: Settings) -> None:
    (job_id,) = submit(alice, [holdout(1)[0][0]])
    with db_session(settings) as session:
        claim_jobs(session, [job_id], "ghost@nowhere")
    job = alice.get(f"/v1/jobs/{job_id}").get_json()
    assert job["status"] == "running"
    assert job["stuck"]["reason"] == "worker-lost"
    with db_session(settings) as session:
        fail_jobs(session, [uuid.UUID(job_id)], {"type": "test", "message": "cleaned up"})


def _text(registry: Any) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode()
