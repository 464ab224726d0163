"""The feedback loop on the session's real Postgres and Redis: users label what a weak model
got wrong, a scheduled retraining learns it, the rollout policy puts the new version in front
of them; failed runs leave serving alone; one beat sends the schedule, however many run."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import redis
from flask.testing import FlaskClient
from sqlalchemy import select

from api.app import create_app
from db.registry import ensure_model, get_model
from db.training import get_run
from inferq.cli.common import db_session
from inferq.core.artifacts import pack, unpack
from inferq.core.broker import make_celery, queue_name
from inferq.core.messages import TRAIN_TASK
from inferq.core.settings import Settings
from scheduler.retraining import beat_schedule
from scheduler.rollout import apply_pending
from tests.factories import (
    digits_variants,
    leave_no_pending_rollout,
    stored_bytes,
    stored_version,
)
from tests.integration.conftest import Caller
from tests.processes import ServiceProcess, wait_for_log
from tests.services import wipe_redis
from workers.context import WorkerContext
from workers.handlers.digits import DigitsNet, dataset, evaluate, fit
from workers.runner import run_batch
from workers.trainer import run_training

WEAK_DIGIT = 7
FAST = {"train_options": {"epochs": 12}}


@pytest.fixture
def ctx(settings: Settings, digits_version: int) -> Iterator[WorkerContext]:
    context = WorkerContext.create(
        settings, f"train-{uuid.uuid4().hex[:6]}@test", make_celery(settings)
    )
    yield context
    context.redis.close()
    context.sessions.kw["bind"].dispose()  # the shared Postgres has few connections to spare


@pytest.fixture
def operator(http: FlaskClient, operator_key: str) -> Caller:
    return Caller(http, operator_key)


def new_model(settings: Settings, handler: str, artifact: bytes, sha: str, metrics: dict) -> str:
    name = f"retrain-{uuid.uuid4().hex[:8]}"
    with db_session(settings) as session:
        model = ensure_model(
            session,
            name,
            handler,
            {"type": "object"},
            {"max_batch_size": 64, "max_batch_delay_ms": 2, **FAST},
            {"type": "integer", "minimum": 0, "maximum": 9},
        )
        stored_version(session, settings, model, artifact, metrics=metrics, activate=True)
    return name


def serve(ctx: WorkerContext, caller: Caller, model: str, inputs: list[list[float]]) -> list[dict]:
    ids = []
    for pixels in inputs:
        response = caller.post("/v1/jobs", {"model": model, "input": {"pixels": pixels}})
        assert response.status_code == 202, response.get_json()
        ids.append(response.get_json()["id"])
    for start in range(0, len(ids), 64):
        run_batch(ctx, ids[start : start + 64])
    return [caller.get(f"/v1/jobs/{job_id}").get_json() for job_id in ids]


def accuracy_on(tensors: dict, x: np.ndarray, y: np.ndarray) -> float:
    net = DigitsNet()
    net.load_state_dict(tensors)
    return evaluate(net.eval(), x, y)


def version_tensors(settings: Settings, model: str, number: int) -> dict:
    from db.tables import ModelVersion

    with db_session(settings) as session:
        row = get_model(session, model)
        assert row is not None
        version = session.query(ModelVersion).filter_by(model_id=row.id, version=number).one()
        return unpack(stored_bytes(settings, version.artifact_uri), version.sha256)[0]


def test_feedback_on_a_weak_digit_retrains_and_rolls_out_a_better_version(
    alice: Caller, ctx: WorkerContext
) -> None:
    # Given digits v1 trained without most of the 7s: poor at them
    split = dataset()
    sevens = np.flatnonzero(split.train_y == WEAK_DIGIT)
    kept = np.setdiff1d(np.arange(len(split.train_y)), sevens[5:])
    net = fit(split.train_x[kept], split.train_y[kept], seed=0, epochs=12)
    artifact, sha = pack(net.state_dict(), {"architecture": "DigitsNet"})
    v1_holdout = evaluate(net, split.holdout_x, split.holdout_y)
    model = new_model(ctx.settings, "digits", artifact, sha, {"holdout_accuracy": v1_holdout})
    held_x = split.holdout_x[split.holdout_y == WEAK_DIGIT]
    held_y = split.holdout_y[split.holdout_y == WEAK_DIGIT]
    v1_on_sevens = evaluate(net, held_x, held_y)

    # When users submit the 7s v1 never saw and send their true labels as feedback
    served = serve(ctx, alice, model, [list(map(float, x)) for x in split.train_x[sevens[5:]]])
    assert all(job["status"] == "succeeded" and job["version"] == 1 for job in served)
    for job in served:
        response = alice.post(f"/v1/jobs/{job['id']}/feedback", {"label": WEAK_DIGIT})
        assert response.status_code == 201
    # ...and retraining starts the way beat starts it: the scheduled task, sent on its lane
    settings = ctx.settings.replace(
        retrain_schedule=f"{model}=0 3 * * *",
        retrain_policy=f"{model}=promote:0.005",
    )
    entry = beat_schedule(settings)[f"retrain {model}"]
    assert entry["task"] == TRAIN_TASK
    assert entry["options"]["queue"] == queue_name(settings, "training")
    run_id = run_training(ctx, *entry["args"])

    # Then the run succeeded and registered v2 as a candidate, with its data and metrics
    assert run_id is not None
    with ctx.sessions() as session:
        found = get_run(session, run_id)
        assert found is not None
        run = found[0]
        assert (run.status, run.trigger, run.rollout, run.progress) == (
            "succeeded",
            "schedule",
            "pending",
            1.0,
        )
        assert run.error is None and run.duration_s is not None and run.duration_s > 0
        assert run.feedback_train + run.feedback_eval == len(served)
        assert run.metrics["candidate"]["version"] == 2
        assert (
            run.metrics["candidate"]["feedback_accuracy"]
            > run.metrics["active"]["feedback_accuracy"]
        )
    # v2 is much better than v1 at 7s it never saw (the holdout's)
    v2_on_sevens = accuracy_on(version_tensors(settings, model, 2), held_x, held_y)
    assert v2_on_sevens >= 0.9 and v2_on_sevens - v1_on_sevens >= 0.3, (v1_on_sevens, v2_on_sevens)

    # When the scheduler applies the policy (promote when better on the holdout by a margin)
    assert apply_pending(ctx.sessions, settings) == {run_id: "promoted"}
    shown = alice.get(f"/v1/models/{model}").get_json()
    assert shown["active_version"] == 2
    assert (shown["training"]["id"], shown["training"]["rollout"]) == (str(run_id), "promoted")

    # Then later jobs are served by v2, and they get the 7s right
    later = serve(ctx, alice, model, [list(map(float, x)) for x in held_x[:20]])
    assert {job["version"] for job in later} == {2}
    assert sum(job["output"]["label"] == WEAK_DIGIT for job in later) >= 18
    assert apply_pending(ctx.sessions, settings) == {}  # rolled out once


def test_the_ab_policy_starts_an_experiment_for_a_candidate_not_worse_on_the_holdout(
    operator: Caller, ctx: WorkerContext
) -> None:
    # Given a model serving a weak version, and a run that registered a better candidate
    variants = digits_variants()
    bad, good = variants["bad"], variants["good"]
    model = new_model(ctx.settings, "digits", bad.data, bad.sha256, bad.metrics)
    with db_session(ctx.settings) as session:
        row = get_model(session, model)
        assert row is not None
        candidate = stored_version(
            session, ctx.settings, row, good.data, metrics=good.metrics, activate=False
        )
        from db.training import finish_run, open_run, start_run

        run = open_run(session, row.id, trigger="manual", requested_by="tests", stale_after_s=60)
        assert run is not None
        start_run(session, run.id, row.active_version_id)
        finish_run(
            session,
            run.id,
            status="succeeded",
            candidate_version_id=candidate.id,
            rollout="pending",
        )
        run_id = run.id
    settings = ctx.settings.replace(retrain_policy=f"{model}=ab:0.25")

    # When the scheduler rolls it out
    assert apply_pending(ctx.sessions, settings) == {run_id: "experiment"}

    # Then an A/B experiment sends the candidate a quarter of the traffic, to promote on a win
    body = operator.get(f"/v1/training-runs/{run_id}").get_json()
    assert body["rollout"] == "experiment" and body["experiment_id"]
    experiment = operator.get(f"/v1/experiments/{body['experiment_id']}").get_json()
    assert experiment["mode"] == "ab" and experiment["status"] == "running"
    weights = {arm["version"]: arm["weight"] for arm in experiment["arms"]}
    assert weights == {1: pytest.approx(0.75), 2: pytest.approx(0.25)}
    assert experiment["policy"]["action"] == "promote"


def test_a_crashing_training_run_is_recorded_and_the_active_version_keeps_serving(
    alice: Caller, operator: Caller, ctx: WorkerContext
) -> None:
    # Given a model whose training crashes, serving a good v1, with some labelled feedback
    good = digits_variants()["good"]
    model = new_model(
        ctx.settings,
        "tests.fixture_models.broken_train:BrokenTrainDigits",
        good.data,
        good.sha256,
        good.metrics,
    )
    split = dataset()
    for job in serve(ctx, alice, model, [list(map(float, x)) for x in split.holdout_x[:10]]):
        alice.post(f"/v1/jobs/{job['id']}/feedback", {"label": 1})

    # When an operator asks for a retraining (a second ask meanwhile is refused)
    response = operator.post(f"/v1/models/{model}/retrain")
    assert response.status_code == 202, response.get_json()
    run = response.get_json()
    assert response.headers["Location"].endswith(run["id"])
    assert (run["status"], run["trigger"]) == ("queued", "manual")
    assert operator.post(f"/v1/models/{model}/retrain").status_code == 409
    assert alice.post(f"/v1/models/{model}/retrain").status_code == 403
    # ...and a training worker runs it
    assert str(run_training(ctx, model, run["id"], "manual")) == run["id"]

    # Then the run failed with its reason, no version was added, and v1 still serves
    body = alice.get(f"/v1/training-runs/{run['id']}").get_json()
    assert body["status"] == "failed"
    assert "ValueError: loss is nan" in body["error"]
    assert body["candidate_version_id"] is None and body["completed_at"]
    assert [job["version"] for job in serve(ctx, alice, model, [[0.0] * 64])] == [1]
    models = alice.get(f"/v1/models/{model}").get_json()
    assert models["active_version"] == 1 and len(models["versions"]) == 1
    # ...and a new run may start
    assert operator.post(f"/v1/models/{model}/retrain").status_code == 202
    assert alice.get(f"/v1/training-runs/{uuid.uuid4()}").status_code == 404


def queued_training(settings: Settings) -> list[dict]:
    client = redis.Redis.from_url(settings.effective_redis_url)
    key = f"{settings.namespace}:{queue_name(settings, 'training')}"
    messages = [json.loads(raw) for raw in client.lrange(key, 0, -1)]
    client.close()
    return [
        {"origin": m["headers"]["origin"], "args": json.loads(base64.b64decode(m["body"]))[0]}
        for m in messages
        if m["headers"].get("task") == TRAIN_TASK
    ]


def test_one_beat_sends_the_schedule_even_when_two_run(settings: Settings, logs_dir: Path) -> None:
    # Given two schedulers (beat + its threads) with a schedule firing every second, on their
    # own namespace, their other periodic work idle
    beat_settings = settings.replace(
        namespace=f"beat{uuid.uuid4().hex[:6]}",
        retrain_schedule="digits=every 1s",
        beat_lock_ttl_s=3.0,
        reconcile_interval_s=3600.0,
        experiment_interval_s=3600.0,
        retrain_check_interval_s=3600.0,
        home=logs_dir / f"beat-{uuid.uuid4().hex[:6]}",
    )
    first = ServiceProcess("beat-a", ["beat"], beat_settings, logs_dir)
    second = None
    try:
        wait_for_log(first, "holding the beat lock")
        second = ServiceProcess("beat-b", ["beat"], beat_settings, logs_dir)
        wait_for_log(second, "another beat holds the beat lock")

        # When both run for a few seconds
        time.sleep(4)

        # Then every training message came from the one holding the lock
        sent = queued_training(beat_settings)
        assert len(sent) >= 3
        assert {m["origin"].split("@")[0] for m in sent} == {f"gen{first.pid}"}
        assert all(m["args"] == ["digits", None, "schedule"] for m in sent)
        assert "holding the beat lock" not in second.log()

        # When the holder dies, the other takes over within the lock's TTL
        first.kill()
        wait_for_log(second, "holding the beat lock", timeout=15)
        deadline = time.monotonic() + 30  # its schedule fires every second from now on
        origins: set[str] = set()
        while f"gen{second.pid}" not in origins and time.monotonic() < deadline:
            time.sleep(0.5)
            origins = {m["origin"].split("@")[0] for m in queued_training(beat_settings)}
        assert origins == {f"gen{first.pid}", f"gen{second.pid}"}
    finally:
        first.stop()
        if second is not None:
            second.stop()


def test_the_cli_starts_a_run_and_follows_it_to_the_end(
    ctx: WorkerContext, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Given a model, and a training worker that picks up the run once it is queued
    from click.testing import CliRunner

    from db.training import open_run_of
    from inferq.cli import main

    good = digits_variants()["good"]
    model = new_model(
        ctx.settings,
        "tests.fixture_models.broken_train:BrokenTrainDigits",
        good.data,
        good.sha256,
        good.metrics,
    )
    for key, value in ctx.settings.to_env().items():
        monkeypatch.setenv(key, value)

    def worker() -> None:
        for _ in range(100):
            with ctx.sessions() as session:
                row = get_model(session, model)
                run = open_run_of(session, row.id) if row else None
            if run is not None:
                run_training(ctx, model, str(run.id), "manual")
                return
            time.sleep(0.1)

    thread = threading.Thread(target=worker)
    thread.start()

    # When `inferq retrain NAME --wait` runs
    result = CliRunner().invoke(main, ["retrain", model, "--wait"])
    thread.join(timeout=30)

    # Then it followed the run to its end and printed it, exiting 1 for the failure
    assert result.exit_code == 1, result.output
    printed = json.loads(result.stdout)
    assert (printed["model"], printed["status"], printed["trigger"]) == (model, "failed", "manual")
    assert "training run" in result.stderr and "loss is nan" in printed["error"]


def test_a_model_whose_feedback_accuracy_drops_retrains_early(
    alice: Caller, ctx: WorkerContext
) -> None:
    # Given a model serving a weak version, whose users' labels say it is often wrong
    from scheduler.retraining import check_drift

    bad = digits_variants()["bad"]
    model = new_model(ctx.settings, "digits", bad.data, bad.sha256, bad.metrics)
    split = dataset()
    inputs = [list(map(float, x)) for x in split.holdout_x[:40]]
    for job, label in zip(serve(ctx, alice, model, inputs), split.holdout_y[:40], strict=True):
        assert (
            alice.post(f"/v1/jobs/{job['id']}/feedback", {"label": int(label)}).status_code == 201
        )
    settings = ctx.settings.replace(
        drift_min_accuracy=0.95, drift_min_feedback=30, drift_window_s=600.0
    )

    quality = alice.get(f"/v1/models/{model}").get_json()["quality"]
    assert quality["judged"] == 40 and quality["accuracy"] < 0.95

    # When the scheduler checks for drift
    started = check_drift(ctx.sessions, settings, ctx.app)

    # Then a drift-triggered run is queued with its reason, and sent to the training lane
    assert model in started
    with ctx.sessions() as session:
        from db.training import open_run_of

        row = get_model(session, model)
        assert row is not None
        run = open_run_of(session, row.id)
        assert run is not None and (run.status, run.trigger) == ("queued", "drift")
        assert "feedback accuracy" in run.requested_by and "below 0.95" in run.requested_by
    assert [model, str(run.id), "drift"] in [m["args"] for m in queued_training(settings)]
    # ...once: the next check finds the model already retraining
    assert model not in check_drift(ctx.sessions, settings, ctx.app)


def test_a_real_training_worker_runs_a_requested_run(
    settings: Settings, operator_key: str, logs_dir: Path
) -> None:
    # Given a worker process that consumes the training lane alone (a namespace of its own:
    # runs earlier tests left on this run's training queue are not its business), and a
    # model it can train
    own = settings.replace(namespace=f"{settings.namespace}tr{uuid.uuid4().hex[:4]}")
    operator = Caller(create_app(own).test_client(), operator_key)
    good = digits_variants()["good"]
    model = new_model(own, "digits", good.data, good.sha256, good.metrics)
    worker = ServiceProcess(
        f"trainer-{uuid.uuid4().hex[:6]}",
        ["worker", "--name", f"trainer-{uuid.uuid4().hex[:6]}", "--lanes", "training"],
        own,
        logs_dir,
    )
    try:
        # When an operator asks for a retraining over HTTP
        response = operator.post(f"/v1/models/{model}/retrain")
        assert response.status_code == 202
        run_id = response.get_json()["id"]

        # Then the worker trains and registers a candidate, and the run says so
        deadline, body = time.monotonic() + 120, {}
        while time.monotonic() < deadline:
            body = operator.get(f"/v1/training-runs/{run_id}").get_json()
            if body["status"] in ("succeeded", "failed"):
                break
            assert worker.alive(), worker.log()[-2000:]
            time.sleep(0.5)
        assert body["status"] == "succeeded", (body, worker.log()[-2000:])
        assert body["metrics"]["candidate"]["version"] == 2 and body["rollout"] == "pending"
        versions = operator.get(f"/v1/models/{model}").get_json()["versions"]
        assert [(v["version"], v["status"]) for v in versions] == [(1, "active"), (2, "candidate")]
    finally:
        worker.stop()


def training_runs(settings: Settings, model: str) -> list[dict]:
    """The model's finished runs, oldest first: trigger, status, candidate version, rollout."""
    from db.tables import ModelVersion, TrainingRun

    with db_session(settings) as session:
        row = get_model(session, model)
        assert row is not None
        runs = session.scalars(
            select(TrainingRun)
            .where(TrainingRun.model_id == row.id, TrainingRun.completed_at.is_not(None))
            .order_by(TrainingRun.completed_at)
        ).all()
        versions = {
            v.id: v.version
            for v in session.scalars(select(ModelVersion).where(ModelVersion.model_id == row.id))
        }
        return [
            {
                "trigger": run.trigger,
                "status": run.status,
                "candidate": versions.get(run.candidate_version_id or -1),
                "rollout": run.rollout,
                "reason": run.rollout_reason,
            }
            for run in runs
        ]


def test_beat_and_a_training_worker_retrain_on_schedule_and_the_rollout_decides(
    settings: Settings, operator_key: str, logs_dir: Path
) -> None:
    """Catches: the scheduler process not running the rollout loop (``retrain_forever`` never
    started in scheduler/service.py: the candidate stays ``pending``), beat not given the
    retraining schedule (no run ever starts), and a rollout that promotes a candidate its
    policy should hold (``decide`` ignoring the margin)."""
    # Given a model serving a weak version (holdout about 0.72), trained fast, in a namespace
    # of its own (no other test's training messages), whose policy promotes a candidate 0.1
    # better on the holdout
    bad = digits_variants()["bad"]
    own = settings.replace(namespace=f"{settings.namespace}rp{uuid.uuid4().hex[:4]}")
    model = new_model(own, "digits", bad.data, bad.sha256, bad.metrics)
    own = own.replace(
        retrain_schedule=f"{model}=every 2s",
        retrain_policy=f"{model}=promote:0.1",
        retrain_check_interval_s=0.5,
        reconcile_interval_s=3600.0,
        experiment_interval_s=3600.0,
        home=logs_dir / f"retrain-{uuid.uuid4().hex[:6]}",
    )
    tag = uuid.uuid4().hex[:6]
    # When a training worker and the scheduler run as processes
    worker = ServiceProcess(
        f"trainer-{tag}", ["worker", "--name", f"trainer-{tag}", "--lanes", "training"], own,
        logs_dir,
    )  # fmt: skip
    beat = ServiceProcess(f"beat-{tag}", ["beat"], own, logs_dir)
    try:
        # Then beat's schedule starts a run, the worker trains v2 from v1, and the scheduler
        # promotes it (about 0.97 on the holdout); the next scheduled run's candidate, not
        # 0.1 better than v2, is held
        deadline, runs = time.monotonic() + 120, []
        while time.monotonic() < deadline:
            runs = training_runs(own, model)
            if any(run["rollout"] == "held" for run in runs):
                break
            assert worker.alive() and beat.alive(), (worker.log()[-2000:], beat.log()[-2000:])
            time.sleep(0.3)
    finally:
        beat.stop()
        worker.stop()
        wipe_redis(own.effective_redis_url, own.namespace)
        leave_no_pending_rollout(own, model)
    assert len(runs) >= 2, (runs, worker.log()[-2000:], beat.log()[-2000:])
    first, second = runs[0], runs[1]
    assert (first["trigger"], first["status"], first["candidate"]) == ("schedule", "succeeded", 2)
    assert first["rollout"] == "promoted", first
    assert (second["trigger"], second["status"], second["rollout"]) == (
        "schedule",
        "succeeded",
        "held",
    ), second
    assert "not rolled out" in second["reason"]
    shown = (
        Caller(create_app(own).test_client(), operator_key).get(f"/v1/models/{model}").get_json()
    )
    assert shown["active_version"] == 2
    statuses = {v["version"]: v["status"] for v in shown["versions"]}
    assert statuses[2] == "active" and statuses[second["candidate"]] == "candidate"


def test_a_candidate_worse_than_the_active_version_is_held_under_ab(
    operator: Caller, ctx: WorkerContext
) -> None:
    """Catches: the ``held`` branch of the rollout (scheduler/rollout.py) starting an experiment
    or promoting anyway (``decide`` returning ``experiment`` for a worse candidate)."""
    # Given a model serving a good version, and a run that registered a worse candidate
    variants = digits_variants()
    good, bad = variants["good"], variants["bad"]
    model = new_model(ctx.settings, "digits", good.data, good.sha256, good.metrics)
    with db_session(ctx.settings) as session:
        from db.training import finish_run, open_run, start_run

        row = get_model(session, model)
        assert row is not None
        candidate = stored_version(
            session, ctx.settings, row, bad.data, metrics=bad.metrics, activate=False
        )
        run = open_run(session, row.id, trigger="manual", requested_by="tests", stale_after_s=60)
        assert run is not None
        start_run(session, run.id, row.active_version_id)
        finish_run(
            session, run.id, status="succeeded", candidate_version_id=candidate.id,
            rollout="pending",
        )  # fmt: skip
        run_id = run.id
    settings = ctx.settings.replace(retrain_policy=f"{model}=ab:0.25")

    # When the scheduler rolls it out (runs other tests left pending may be rolled out too)
    assert apply_pending(ctx.sessions, settings)[run_id] == "held"

    # Then the run says why, v1 still serves alone, and the candidate waits for an operator
    body = operator.get(f"/v1/training-runs/{run_id}").get_json()
    assert body["rollout"] == "held" and body["experiment_id"] is None
    assert "not rolled out" in body["rollout_reason"], body
    shown = operator.get(f"/v1/models/{model}").get_json()
    assert shown["active_version"] == 1 and shown["experiment"] is None
    assert [(v["version"], v["status"]) for v in shown["versions"]] == [
        (1, "active"),
        (2, "candidate"),
    ]
    assert run_id not in apply_pending(ctx.sessions, settings)  # decided once
