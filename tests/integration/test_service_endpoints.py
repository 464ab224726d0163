"""Models, health and readiness, and the schema the migrations build."""

from __future__ import annotations

import json
import re

import redis
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from flask.testing import FlaskClient
from sqlalchemy import create_engine

from db.tables import Base
from inferq.core.settings import Settings
from inferq.core.status import remove_beat, write_beat
from tests.integration.conftest import Caller

PARTITION = re.compile(
    r"(jobs|feedback|webhooks|webhook_deliveries|shadow_results)_p\d{8}(t\d{6})?"
)


def not_a_partition(name: str | None, kind: str, _: object) -> bool:
    """jobs' partitions (``jobs_p20261204``) are made at run time, not declared."""
    return not (kind == "table" and name is not None and PARTITION.fullmatch(name))


def not_about_a_partition(
    item: object, name: str | None, kind: str, reflected: bool, _: object
) -> bool:
    """Postgres clones a foreign key to a partitioned table once per partition."""
    if kind == "foreign_key_constraint" and reflected:
        return not PARTITION.fullmatch(item.referred_table.name)  # type: ignore[attr-defined]
    return True


def test_migrations_build_exactly_the_models(settings: Settings) -> None:
    engine = create_engine(settings.database_url or "")
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_name": not_a_partition,
                "include_object": not_about_a_partition,
            },
        )
        diff = compare_metadata(context, Base.metadata)
    engine.dispose()
    assert diff == []


def test_models_lists_digits_with_its_active_version(alice: Caller, digits_version: int) -> None:
    body = alice.get("/v1/models").get_json()
    digits = next(m for m in body["models"] if m["name"] == "digits")
    assert digits["active_version"] == digits_version
    active = next(v for v in digits["versions"] if v["version"] == digits_version)
    assert active["status"] == "active"
    assert active["metrics"]["holdout_accuracy"] >= 0.95
    assert len(active["sha256"]) == 64
    assert digits["input_schema"]["properties"]["pixels"]["maxItems"] == 64
    assert alice.get("/v1/models/digits").get_json()["name"] == "digits"
    assert alice.get("/v1/models/nope").status_code == 404


def test_health_and_readiness(http: FlaskClient) -> None:
    assert http.get("/healthz").get_json() == {"status": "ok"}
    ready = http.get("/readyz?scope=node")
    assert ready.status_code == 200
    assert ready.get_json()["checks"] == {"database": "ok", "redis": "ok", "broker": "ok"}
    assert http.get("/readyz?scope=nonsense").status_code == 400


def beat(settings: Settings, name: str, lanes: list[str], ready: bool) -> None:
    """A worker's heartbeat, as workers.heartbeat writes it."""
    body = {"name": name, "lanes": lanes, "consuming": True, "ready": ready, "stalled_s": 0}
    client = redis.Redis.from_url(settings.effective_redis_url)
    write_beat(client, settings, name, json.dumps(body), 10_000)


def test_the_system_is_ready_only_once_a_worker_consumes_the_online_lane(
    http: FlaskClient, settings: Settings
) -> None:
    """Catches: a /readyz (and so `inferq up`'s banner) that says ready while a job submitted
    now would wait in the queue for a worker still starting."""
    # Given the database, Redis and the broker up, but no worker yet
    alone = http.get("/readyz")
    assert alone.status_code == 503
    assert alone.get_json()["checks"]["workers"].startswith("unavailable")

    # When workers of other lanes run, and an online worker has started but not yet consumes
    beat(settings, "batch-1", ["batch"], ready=True)
    beat(settings, "worker-1", ["online"], ready=False)

    # Then the system is still not ready
    assert http.get("/readyz").status_code == 503

    # When the online worker's consumer loop runs, then it is
    beat(settings, "worker-1", ["online"], ready=True)
    ready = http.get("/readyz")
    assert ready.status_code == 200, ready.get_json()
    assert ready.get_json()["checks"]["workers"] == "ok"
    client = redis.Redis.from_url(settings.effective_redis_url)
    remove_beat(client, settings, "batch-1")
    remove_beat(client, settings, "worker-1")


def test_readiness_fails_when_the_database_is_unreachable(
    settings: Settings, digits_version: int
) -> None:

    from api.app import create_app

    broken = settings.replace(database_url="postgresql+psycopg2://nobody@127.0.0.1:1/none")
    response = create_app(broken).test_client().get("/readyz")
    assert response.status_code == 503
    assert response.get_json()["checks"]["database"].startswith("unavailable")


def test_a_queued_job_shows_its_position(alice: Caller) -> None:
    first = alice.post("/v1/jobs", {"model": "digits", "input": {"pixels": [1] * 64}}).get_json()
    second = alice.post("/v1/jobs", {"model": "digits", "input": {"pixels": [2] * 64}}).get_json()
    assert first["status"] == second["status"] == "queued"
    a = alice.get(f"/v1/jobs/{first['id']}").get_json()
    b = alice.get(f"/v1/jobs/{second['id']}").get_json()
    assert b["position"] == a["position"] + 1


def test_feedback_is_stored_for_a_finished_job(alice: Caller) -> None:
    job = alice.post("/v1/jobs", {"model": "digits", "input": {"pixels": [0] * 64}}).get_json()
    assert (
        alice.post(f"/v1/jobs/{job['id']}/feedback", {"label": 3}).status_code == 409
    )  # not finished
    alice.post(f"/v1/jobs/{job['id']}/cancel")
    response = alice.post(
        f"/v1/jobs/{job['id']}/feedback",
        {"label": 3, "correct": False, "score": 0.5, "comment": "meh"},
    )
    assert response.status_code == 201
    assert response.get_json()["label"] == 3


def test_request_ids_are_echoed(alice: Caller) -> None:
    response = alice.get("/v1/models", headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    assert len(alice.get("/v1/models").headers["X-Request-ID"]) == 32
