"""Every kind of bad request gets the right 4xx problem+json, and changes nothing."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import create_engine, func, select, text

from db.tables import Job
from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.factories import pixels
from tests.integration.conftest import Caller

PROBLEM = "application/problem+json"


def job_count(settings: Settings) -> int:
    engine = create_engine(settings.database_url or "")
    with engine.connect() as conn:
        count = conn.scalar(select(func.count()).select_from(Job)) or 0
    engine.dispose()
    return count


def assert_problem(response: Any, status: int, slug: str) -> dict[str, Any]:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    body = response.get_json(force=True)
    assert body["status"] == status
    assert body["type"].endswith("/" + slug)
    assert body["title"] and body["detail"]
    assert "Traceback" not in json.dumps(body)
    return body


@pytest.mark.parametrize(
    ("body", "pointer"),
    [
        ({"model": "digits", "input": pixels(1.0, 63)}, "/input/pixels"),
        ({"model": "digits", "input": pixels(1.0, 65)}, "/input/pixels"),
        ({"model": "digits", "input": pixels(16.5)}, "/input/pixels/0"),
        ({"model": "digits", "input": pixels(-1)}, "/input/pixels/0"),
        ({"model": "digits", "input": {"pixels": ["1"] * 64}}, "/input/pixels/0"),
        ({"model": "digits", "input": {"pixels": [True] * 64}}, "/input/pixels/0"),
        ({"model": "digits", "input": {"pixels": "0" * 64}}, "/input/pixels"),
        ({"model": "digits", "input": {}}, "/input"),
        ({"model": "digits", "input": {**pixels(), "extra": 1}}, "/input"),
        ({"model": "digits", "input": {"image": "not base64!"}}, "/input/image"),
        ({"model": "digits", "input": {"image": "aGVsbG8gd29ybGQ="}}, "/input/image"),
        ({"model": "digits", "input": [1, 2, 3]}, "/input"),
        ({"model": 7, "input": pixels()}, "/model"),
        ({"model": "nope", "input": pixels()}, "/model"),
        ({"input": pixels()}, "/"),
        ({"model": "digits"}, "/"),
        ({"model": "digits", "input": pixels(), "lane": "express"}, "/lane"),
        ({"model": "digits", "input": pixels(), "surprise": True}, "/"),
    ],
)
def test_invalid_jobs_are_422_and_create_nothing(
    alice: Caller, settings: Settings, body: dict[str, Any], pointer: str
) -> None:
    before = job_count(settings)
    problem = assert_problem(alice.post("/v1/jobs", body), 422, "invalid-input")
    assert problem["errors"][0]["pointer"] == pointer
    assert job_count(settings) == before


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "digits", "input": ',
        b"not json at all",
        b'{"model": "digits", "input": {"pixels": [NaN' + b", 0" * 63 + b"]}}",
        b'{"model": "digits", "input": {"pixels": [Infinity' + b", 0" * 63 + b"]}}",
        b'{"model": "digits", "input": {"pixels": [1e999' + b", 0" * 63 + b"]}}",
        b"[1, 2, 3]",
        b'"a string"',
        b"\xff\xfe\x00",
        b"[" * 100_000 + b"]" * 100_000,
    ],
)
def test_malformed_json_is_400(alice: Caller, settings: Settings, raw: bytes) -> None:
    before = job_count(settings)
    response = alice.http.post(
        "/v1/jobs", data=raw, headers=alice.headers({"Content-Type": "application/json"})
    )
    assert_problem(response, 400, "bad-request")
    assert job_count(settings) == before


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "digits", "input": {"pixels": [0]}, "user": "a\\u0000b"}',
        b'{"model": "digits\\u0000", "input": {"pixels": [0]}}',
        b'{"model": "digits", "input": {"pixels": [0]}, "user": "\\ud800"}',
        b'{"model": "digits", "input": {"pixels": [0]}, "user": "\xed\xa0\x80"}',
        b'{"model": "digits", "input": {"pixels": [0], "\\u0000": 1}}',
    ],
)
def test_what_postgres_cannot_store_is_422_and_creates_nothing(
    alice: Caller, settings: Settings, raw: bytes
) -> None:
    # NUL characters and lone surrogates are valid JSON that Postgres refuses (JSONB and text)
    before = job_count(settings)
    response = alice.http.post(
        "/v1/jobs", data=raw, headers=alice.headers({"Content-Type": "application/json"})
    )
    problem = assert_problem(response, 422, "invalid-input")
    assert "cannot be stored" in problem["detail"]
    assert job_count(settings) == before


@pytest.mark.parametrize(
    "url",
    [
        "/v1/models/digits%00",
        "/v1/jobs/%00",
        "/v1/experiments?model=a%00b",
        "/v1/batches?model=digits%00",
        "/v1/stats?window=%00",
    ],
)
def test_a_nul_in_the_url_is_400(operator: Caller, url: str) -> None:
    for method in ("get", "post"):
        response = getattr(operator.http, method)(url, headers=operator.headers())
        assert_problem(response, 400, "bad-request")


def test_a_nul_in_a_bearer_key_is_401(alice: Caller) -> None:
    response = alice.http.get("/v1/models", headers={"Authorization": "Bearer iq_\x00abc"})
    assert_problem(response, 401, "unauthorized")


def test_wrong_content_type_is_415(alice: Caller) -> None:
    response = alice.http.post(
        "/v1/jobs",
        data="model=digits",
        headers=alice.headers({"Content-Type": "application/x-www-form-urlencoded"}),
    )
    assert_problem(response, 415, "unsupported-media-type")


def test_oversized_body_is_413(alice: Caller, settings: Settings) -> None:
    before = job_count(settings)
    body = json.dumps({"model": "digits", "input": {"image": "A" * settings.api.max_body_bytes}})
    response = alice.http.post(
        "/v1/jobs", data=body, headers=alice.headers({"Content-Type": "application/json"})
    )
    assert_problem(response, 413, "payload-too-large")
    assert job_count(settings) == before


@pytest.mark.parametrize(
    "authorization",
    [None, "", "Bearer", "Bearer ", "Basic dXNlcjpwYXNz", "Bearer iq_not-a-real-key", "Token iq_x"],
)
def test_missing_or_wrong_key_is_401(alice: Caller, authorization: str | None) -> None:
    headers = {} if authorization is None else {"Authorization": authorization}
    response = alice.http.post(
        "/v1/jobs", json={"model": "digits", "input": pixels()}, headers=headers
    )
    assert_problem(response, 401, "unauthorized")
    assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_expired_and_revoked_keys_are_401(alice: Caller, keys: Keys) -> None:
    for key in (keys.expired, keys.revoked):
        response = alice.http.get("/v1/models", headers={"Authorization": f"Bearer {key}"})
        assert_problem(response, 401, "unauthorized")


def test_missing_scope_is_403(alice: Caller, keys: Keys) -> None:
    read_only = Caller(alice.http, keys.alice_read_only)
    assert_problem(
        read_only.post("/v1/jobs", {"model": "digits", "input": pixels()}), 403, "forbidden"
    )
    submit_only = Caller(alice.http, keys.alice_submit_only)
    assert_problem(submit_only.get(f"/v1/jobs/{uuid.uuid4()}"), 403, "forbidden")


def test_someone_elses_job_is_404_everywhere(alice: Caller, bob: Caller) -> None:
    created = alice.post("/v1/jobs", {"model": "digits", "input": pixels()})
    assert created.status_code == 202
    job_id = created.get_json()["id"]
    assert_problem(bob.get(f"/v1/jobs/{job_id}"), 404, "not-found")
    assert_problem(bob.get(f"/v1/jobs/{job_id}?wait=1"), 404, "not-found")
    assert_problem(bob.post(f"/v1/jobs/{job_id}/cancel"), 404, "not-found")
    assert_problem(bob.post(f"/v1/jobs/{job_id}/feedback", {"label": 3}), 404, "not-found")
    # and the job is untouched by those attempts
    assert alice.get(f"/v1/jobs/{job_id}").get_json()["status"] in (
        "queued",
        "running",
        "succeeded",
    )


@pytest.mark.parametrize(
    "bad_id", ["123", "not-a-uuid", "00000000-0000-0000-0000-00000000000g", "x" * 300]
)
def test_non_uuid_id_is_400(alice: Caller, bad_id: str) -> None:
    assert_problem(alice.get(f"/v1/jobs/{bad_id}"), 400, "bad-request")
    assert_problem(alice.post(f"/v1/jobs/{bad_id}/cancel"), 400, "bad-request")


def test_unknown_job_is_404(alice: Caller) -> None:
    assert_problem(alice.get(f"/v1/jobs/{uuid.uuid4()}"), 404, "not-found")


@pytest.mark.parametrize("wait", ["", "abc", "-1", "nan", "inf", "-inf", "1e999"])
def test_bad_wait_is_400(alice: Caller, wait: str) -> None:
    """An empty ``?wait=`` is a 400 too: the spec types ``wait`` as a number (schemathesis ST201)."""
    assert_problem(alice.get(f"/v1/jobs/{uuid.uuid4()}?wait={wait}"), 400, "bad-request")


def test_unknown_route_and_method_are_problems(alice: Caller) -> None:
    assert_problem(alice.get("/v1/nothing-here"), 404, "not-found")
    response = alice.http.delete("/v1/jobs", headers=alice.headers())
    assert_problem(response, 405, "method-not-allowed")
    assert "POST" in response.headers["Allow"]


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"label": 10},
        {"label": "seven"},
        {"correct": "yes"},
        {"score": "high"},
        {"score": 10**400},  # an integer no float holds (it was a 500 from Postgres)
        {"score": -(10**400)},
        {"comment": "x" * 5000},
        {"other": 1},
    ],
)
def test_bad_feedback_is_422(alice: Caller, body: dict[str, Any]) -> None:
    job_id = alice.post("/v1/jobs", {"model": "digits", "input": pixels()}).get_json()["id"]
    alice.post(f"/v1/jobs/{job_id}/cancel")  # terminal, so feedback is otherwise acceptable
    assert_problem(alice.post(f"/v1/jobs/{job_id}/feedback", body), 422, "invalid-input")


def test_a_value_postgres_refuses_is_a_422_not_a_500(app: Flask, keys: Keys) -> None:
    # Given a route whose input passed every check but a column's range (the safety net for
    # what a schema missed)
    def overflow() -> None:
        with app.extensions["inferq"].sessions() as session:
            session.execute(text("SELECT CAST(:n AS integer)"), {"n": 2**40})

    app.add_url_rule("/test/overflow", "overflow", overflow)
    response = app.test_client().get("/test/overflow")
    problem = assert_problem(response, 422, "invalid-input")
    assert "out of the range" in problem["detail"]


def test_an_unknown_model_is_told_which_models_there_are(alice: Caller) -> None:
    """Catches: a newcomer who mistypes a model name left to find the list elsewhere."""
    problem = assert_problem(
        alice.post("/v1/jobs", {"model": "digit", "input": pixels()}), 422, "invalid-input"
    )
    assert "digits" in problem["detail"], problem
