"""Real experiments in-process: the API assigns, run_batch serves, feedback judges, the
scheduler's check decides, on the session's real Postgres and Redis."""

from __future__ import annotations

import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import select

from db.tables import ShadowResult
from inferq.core.broker import make_celery
from inferq.core.messages import SHADOW_TASK, ShadowRequest
from inferq.core.settings import Settings
from scheduler.experiment_checks import evaluate_all
from tests.factories import digits_variants, experiment_model, holdout
from tests.integration.conftest import Caller, queued_task_args
from workers.context import WorkerContext
from workers.runner import run_batch
from workers.shadow_runs import run_shadows


@pytest.fixture
def ctx(settings: Settings, digits_version: int) -> Iterator[WorkerContext]:
    context = WorkerContext.create(
        settings, f"exp-{uuid.uuid4().hex[:6]}@test", make_celery(settings)
    )
    yield context
    context.redis.close()


def start(operator: Caller, body: dict[str, Any]) -> dict[str, Any]:
    response = operator.post("/v1/experiments", body)
    assert response.status_code == 201, response.get_json()
    assert response.headers["Location"].endswith(response.get_json()["id"])
    return dict(response.get_json())


def submit_all(
    caller: Caller, model: str, pairs: list[tuple[dict[str, Any], int]], users: list[str]
) -> list[dict[str, Any]]:
    jobs = []
    for (body, _), user in zip(pairs, users, strict=True):
        response = caller.post("/v1/jobs", {"model": model, "input": body, "user": user})
        assert response.status_code == 202, response.get_json()
        jobs.append(response.get_json())
    return jobs


def run_all(ctx: WorkerContext, job_ids: list[str]) -> None:
    for start_at in range(0, len(job_ids), 64):
        run_batch(ctx, job_ids[start_at : start_at + 64])


def label_all(caller: Caller, job_ids: list[str], labels: list[int]) -> None:
    for job_id, label in zip(job_ids, labels, strict=True):
        assert caller.post(f"/v1/jobs/{job_id}/feedback", {"label": label}).status_code == 201


def queued_shadow_requests(settings: Settings, job_ids: set[str]) -> list[ShadowRequest]:
    """The shadow messages waiting on the online queue for these jobs (read, not consumed)."""
    requests = [
        ShadowRequest.from_args(args) for args in queued_task_args(settings, "online", SHADOW_TASK)
    ]
    return [request for request in requests if set(request.job_ids) <= job_ids]


def test_an_ab_experiment_finds_the_better_version_and_promotes_it(
    alice: Caller, operator: Caller, ctx: WorkerContext
) -> None:
    # Given a model serving a version trained on corrupted labels, and a good candidate
    variants = digits_variants()
    model = experiment_model(ctx.settings, [variants["bad"], variants["good"]], active=1)
    experiment = start(
        operator,
        {
            "model": model,
            "arms": [{"version": 1, "weight": 50}, {"version": 2, "weight": 50}],
            "policy": {"min_feedback": 60, "alpha": 0.01},
        },
    )
    assert [a["role"] for a in experiment["arms"]] == ["control", "treatment"]
    assert operator.get(f"/v1/models/{model}").get_json()["experiment"] == experiment["id"]
    # When 240 users each send a holdout digit, the jobs run, and feedback gives the truth
    pairs = holdout(240)
    jobs = submit_all(alice, model, pairs, [f"user-{i}" for i in range(240)])
    run_all(ctx, [job["id"] for job in jobs])
    label_all(alice, [job["id"] for job in jobs], [label for _, label in pairs])
    # Then every job records its experiment and arm, and the split is near 50/50
    arms = Counter(job["experiment"]["arm"] for job in jobs)
    assert {job["experiment"]["id"] for job in jobs} == {experiment["id"]}
    assert {job["version"] for job in jobs if job["experiment"]["arm"] == "B"} == {2}
    assert 90 <= arms["A"] <= 150, arms
    # and the live report shows B better, significantly
    report = operator.get(f"/v1/experiments/{experiment['id']}").get_json()
    a, b = report["arms"]
    assert (a["jobs"], b["jobs"]) == (arms["A"], arms["B"])
    assert a["error_rate"] == b["error_rate"] == 0.0
    assert a["latency_ms"]["p50"] > 0 and b["latency_ms"]["p99"] >= b["latency_ms"]["p50"]
    assert (a["feedback"], b["feedback"]) == (arms["A"], arms["B"])
    assert b["accuracy"] > 0.95 and a["accuracy"] < 0.85
    assert b["accuracy_ci"][0] > a["accuracy_ci"][1]
    (diff,) = report["comparisons"]
    assert (diff["arm"], diff["baseline"], diff["test"]) == ("B", "A", "two-proportion z")
    assert diff["significant"] is True and diff["p_value"] < 0.01 and diff["ci"][0] > 0
    assert report["leader"] == "B" and report["status"] == "running"
    # When the scheduler's periodic check runs
    decided = evaluate_all(ctx.sessions)
    # Then it promoted B's version and recorded why
    assert decided[uuid.UUID(experiment["id"])] == "promoted"
    final = operator.get(f"/v1/experiments/{experiment['id']}").get_json()
    assert final["status"] == "concluded"
    assert final["decision"]["decision"] == "promoted" and final["decision"]["winner"] == "B"
    assert "significantly better" in final["decision"]["reason"]
    assert "promoted v2" in final["decision"]["reason"]
    shown = operator.get(f"/v1/models/{model}").get_json()
    assert shown["active_version"] == 2 and shown["experiment"] is None
    assert shown["history"][0]["activated_by"] == f"experiment {experiment['id']}"
    # and new jobs are served by the promoted version, outside any experiment
    after = submit_all(alice, model, pairs[:3], ["user-0", "user-1", "user-2"])
    assert {job["version"] for job in after} == {2}
    assert all("experiment" not in job for job in after)


def test_assignment_is_sticky_per_user_and_per_tenant(
    alice: Caller, bob: Caller, operator: Caller, ctx: WorkerContext
) -> None:
    variants = digits_variants()
    model = experiment_model(ctx.settings, [variants["good"], variants["bad"]], active=1)
    start(operator, {"model": model, "arms": [{"version": 1}, {"version": 2}]})
    pairs = holdout(3)
    # Given 50 users who each submit three different inputs
    arm_of_user: dict[str, set[str]] = defaultdict(set)
    for i in range(50):
        for job in submit_all(alice, model, pairs, [f"u{i}"] * 3):
            arm_of_user[f"u{i}"].add(job["experiment"]["arm"])
    # Then each user always landed in one arm, and both arms got users
    assert all(len(arms) == 1 for arms in arm_of_user.values())
    assert {next(iter(arms)) for arms in arm_of_user.values()} == {"A", "B"}
    # and without a user field the whole tenant is one subject
    for caller in (alice, bob):
        jobs = [
            caller.post("/v1/jobs", {"model": model, "input": body}).get_json()
            for body, _ in pairs * 3
        ]
        assert len({job["experiment"]["arm"] for job in jobs}) == 1


def test_a_failing_arm_trips_the_guard_rail_and_traffic_returns_to_the_active_version(
    alice: Caller, operator: Caller, ctx: WorkerContext
) -> None:
    # Given an experiment whose candidate cannot even load
    variants = digits_variants()
    model = experiment_model(ctx.settings, [variants["good"], variants["broken"]], active=1)
    experiment = start(
        operator,
        {
            "model": model,
            "arms": [{"version": 1, "weight": 0.5}, {"version": 2, "weight": 0.5}],
            "policy": {"guard_error_rate": 0.1, "guard_min_jobs": 10},
        },
    )
    pairs = holdout(60)
    jobs = submit_all(alice, model, pairs, [f"g{i}" for i in range(60)])
    run_all(ctx, [job["id"] for job in jobs])
    report = operator.get(f"/v1/experiments/{experiment['id']}").get_json()
    assert report["arms"][1]["error_rate"] == 1.0 and report["arms"][0]["error_rate"] == 0.0
    # When the scheduler checks, long before any feedback
    assert evaluate_all(ctx.sessions)[uuid.UUID(experiment["id"])] == "guard"
    # Then the experiment is stopped, the candidate was not promoted, and v1 serves everyone
    final = operator.get(f"/v1/experiments/{experiment['id']}").get_json()
    assert final["status"] == "stopped" and final["decision"]["winner"] is None
    assert "guard rail: arm B (v2)" in final["decision"]["reason"]
    assert operator.get(f"/v1/models/{model}").get_json()["active_version"] == 1
    after = submit_all(alice, model, pairs[:20], [f"g{i}" for i in range(20)])
    assert {job["version"] for job in after} == {1}


def test_shadow_mode_serves_the_active_version_and_stores_the_candidates_outputs(
    alice: Caller, operator: Caller, ctx: WorkerContext
) -> None:
    # Given a good active version and a worse candidate in shadow
    variants = digits_variants()
    model = experiment_model(ctx.settings, [variants["good"], variants["bad"]], active=1)
    experiment = start(
        operator,
        {
            "model": model,
            "mode": "shadow",
            "arms": [{"version": 1, "name": "live"}, {"version": 2, "name": "candidate"}],
            "policy": {"min_feedback": 50, "alpha": 0.01},
        },
    )
    assert [a["role"] for a in experiment["arms"]] == ["control", "shadow"]
    # When 120 users submit, the API sends each job to its lane and a copy to the shadow arm
    pairs = holdout(120)
    jobs = submit_all(alice, model, pairs, [f"s{i}" for i in range(120)])
    ids = [job["id"] for job in jobs]
    shadow_requests = queued_shadow_requests(ctx.settings, set(ids))
    assert sorted(i for r in shadow_requests for i in r.job_ids) == sorted(ids)
    assert {r.arms for r in shadow_requests} == {(("candidate", shadow_version_id(ctx, model)),)}
    # and workers run both
    run_all(ctx, ids)
    assert run_shadows(ctx, shadow_requests) == 120
    assert run_shadows(ctx, shadow_requests) == 0  # a redelivered copy stores nothing
    # Then clients only ever see the active version's output
    served = [alice.get(f"/v1/jobs/{job_id}").get_json() for job_id in ids]
    assert {job["version"] for job in served} == {1}
    assert {job["experiment"]["arm"] for job in served} == {"live"}
    assert all(set(job["output"]) == {"label", "probabilities"} for job in served)
    # and the candidate's outputs are stored apart, often disagreeing with what was served
    stored = shadow_rows(ctx, ids)
    assert len(stored) == 120 and {row.arm for row in stored} == {"candidate"}
    assert all(row.status == "succeeded" and row.output is not None for row in stored)
    by_job = {str(row.job_id): row.output for row in stored}
    disagreements = sum(job["output"]["label"] != by_job[job["id"]]["label"] for job in served)
    assert disagreements > 0
    # When feedback arrives, the report compares the two on the same jobs
    label_all(alice, ids, [label for _, label in pairs])
    report = operator.get(f"/v1/experiments/{experiment['id']}").get_json()
    live, candidate = report["arms"]
    assert candidate["agreement"]["compared"] == 120
    assert candidate["agreement"]["rate"] == pytest.approx(1 - disagreements / 120, abs=1e-4)
    assert live["accuracy"] > candidate["accuracy"]
    (diff,) = report["comparisons"]
    assert diff["test"] == "McNemar (paired)" and diff["paired_jobs"] == 120
    assert diff["difference"] < 0 and diff["significant"] is True
    # and the scheduler ends it keeping the active version
    assert evaluate_all(ctx.sessions)[uuid.UUID(experiment["id"])] == "kept"
    final = operator.get(f"/v1/experiments/{experiment['id']}").get_json()
    assert final["decision"]["winner"] == "live" and final["status"] == "concluded"
    assert operator.get(f"/v1/models/{model}").get_json()["active_version"] == 1


def shadow_version_id(ctx: WorkerContext, model: str) -> int:
    from db.activations import version_by_number
    from db.registry import get_model

    with ctx.sessions() as session:
        row = get_model(session, model)
        assert row is not None
        version = version_by_number(session, row.id, 2)
        assert version is not None
        return version.id


def shadow_rows(ctx: WorkerContext, job_ids: list[str]) -> list[ShadowResult]:
    with ctx.sessions() as session:
        return list(
            session.scalars(
                select(ShadowResult).where(ShadowResult.job_id.in_([uuid.UUID(i) for i in job_ids]))
            )
        )
