"""``Idempotency-Key`` on submit: one job per key and request, 422 for another request,
one job under concurrent duplicates, forgotten after the TTL."""

from __future__ import annotations

import threading
import time
import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import create_engine, func, select

from api.app import create_app
from db.tables import IdempotencyKey, Job
from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.factories import pixels
from tests.security import assert_problem, make_key

BODY = {"model": "digits", "input": pixels(5.0), "user": "u-1"}


def post(http: FlaskClient, key: str, body: Any, idem: str | None, **headers: str) -> Any:
    sent = {"Authorization": f"Bearer {key}", **headers}
    if idem is not None:
        sent["Idempotency-Key"] = idem
    return http.post("/v1/jobs", json=body, headers=sent)


def count(settings: Settings, model: type, **where: Any) -> int:
    engine = create_engine(settings.database_url or "")
    with engine.connect() as conn:
        query = select(func.count()).select_from(model)
        for name, value in where.items():
            query = query.where(getattr(model, name) == value)
        found = conn.scalar(query) or 0
    engine.dispose()
    return found


def test_the_same_key_and_body_answer_with_the_original_job(
    http: FlaskClient, keys: Keys, settings: Settings
) -> None:
    idem = str(uuid.uuid4())
    first = post(http, keys.alice, BODY, idem)
    assert first.status_code == 202 and "Idempotent-Replayed" not in first.headers
    jobs_before = count(settings, Job)
    reordered = {"user": "u-1", "input": pixels(5.0), "model": "digits"}
    again = post(http, keys.alice, reordered, f'"{idem}"')  # the draft's quoted form too
    assert again.status_code == 202
    assert again.get_json()["id"] == first.get_json()["id"]
    assert again.headers["Idempotent-Replayed"] == "true"
    assert again.headers["Location"] == first.headers["Location"]
    assert count(settings, Job) == jobs_before


def test_a_replay_of_a_finished_job_is_200(http: FlaskClient, keys: Keys) -> None:
    idem = str(uuid.uuid4())
    job_id = post(http, keys.alice, BODY, idem).get_json()["id"]
    http.post(f"/v1/jobs/{job_id}/cancel", headers={"Authorization": f"Bearer {keys.alice}"})
    again = post(http, keys.alice, BODY, idem)
    assert again.status_code == 200 and again.get_json()["status"] == "canceled"


@pytest.mark.parametrize(
    "other",
    [
        {**BODY, "input": pixels(6.0)},
        {**BODY, "user": "u-2"},
        {**BODY, "lane": "batch"},
    ],
)
def test_the_same_key_with_another_body_is_422_and_creates_nothing(
    http: FlaskClient, keys: Keys, settings: Settings, other: dict[str, Any]
) -> None:
    idem = str(uuid.uuid4())
    assert post(http, keys.alice, BODY, idem).status_code == 202
    before = count(settings, Job)
    problem = assert_problem(post(http, keys.alice, other, idem), 422, "invalid-input")
    assert "Idempotency-Key" in problem["detail"]
    assert count(settings, Job) == before


def test_another_cancel_after_is_another_request(http: FlaskClient, keys: Keys) -> None:
    idem = str(uuid.uuid4())
    assert post(http, keys.alice, BODY, idem, **{"Cancel-After": "60"}).status_code == 202
    assert_problem(post(http, keys.alice, BODY, idem, **{"Cancel-After": "30"}), 422)


def test_keys_are_scoped_to_the_api_key(http: FlaskClient, keys: Keys, settings: Settings) -> None:
    idem = str(uuid.uuid4())
    alices = post(http, keys.alice, BODY, idem).get_json()["id"]
    bobs = post(http, keys.bob, BODY, idem)
    assert bobs.status_code == 202 and bobs.get_json()["id"] != alices
    other_key = make_key(settings, "alice", ["submit"])
    assert post(http, other_key, BODY, idem).get_json()["id"] not in (alices, bobs.get_json()["id"])


def test_concurrent_duplicates_make_one_job(app: Flask, keys: Keys, settings: Settings) -> None:
    idem = str(uuid.uuid4())
    start = threading.Barrier(8)
    answers: list[Any] = []

    def send() -> None:
        http = app.test_client()
        start.wait()
        answers.append(post(http, keys.alice, BODY, idem))

    threads = [threading.Thread(target=send) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(a.status_code for a in answers) == [202] * 8
    assert len({a.get_json()["id"] for a in answers}) == 1
    assert sum(a.headers.get("Idempotent-Replayed") == "true" for a in answers) == 7
    job_id = uuid.UUID(answers[0].get_json()["id"])
    assert count(settings, IdempotencyKey, key=idem) == 1
    assert count(settings, Job, id=job_id) == 1


def test_a_key_is_forgotten_after_its_ttl(
    settings: Settings, keys: Keys, digits_version: int
) -> None:
    http = create_app(settings.replace(idempotency_ttl_s=4)).test_client()
    idem = str(uuid.uuid4())
    first = post(http, keys.alice, BODY, idem).get_json()["id"]
    time.sleep(4.2)
    later = post(http, keys.alice, {**BODY, "input": pixels(7.0)}, idem)
    assert later.status_code == 202 and later.get_json()["id"] != first
    assert (
        post(http, keys.alice, {**BODY, "input": pixels(7.0)}, idem).get_json()["id"]
        == (later.get_json()["id"])
    )


def test_a_replay_is_not_refused_by_quotas(settings: Settings, digits_version: int) -> None:
    http = create_app(settings.replace(tenant_max_queued=1, admission_cache_s=0.0)).test_client()
    key = make_key(settings, f"erin-{uuid.uuid4().hex[:6]}", ["submit"])
    idem = str(uuid.uuid4())
    first = post(http, key, BODY, idem)
    assert first.status_code == 202
    assert post(http, key, BODY, idem).get_json()["id"] == first.get_json()["id"]
    assert_problem(post(http, key, BODY, str(uuid.uuid4())), 429)


@pytest.mark.parametrize("idem", ["", "   ", "k" * 256, "tab\there", '""'])
def test_unusable_keys_are_400(
    http: FlaskClient, keys: Keys, settings: Settings, idem: str
) -> None:
    before = count(settings, Job)
    problem = assert_problem(post(http, keys.alice, BODY, idem), 400, "bad-request")
    assert "Idempotency-Key" in problem["detail"]
    assert count(settings, Job) == before
