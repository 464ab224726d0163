"""Input limits beyond the body size: header lengths, string lengths, image sizes, and a
decompression bomb that passes the API's cheap checks but fails alone in the worker."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from flask.testing import FlaskClient

from api.app import create_app
from inferq.core.broker import make_celery
from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.factories import holdout, pixels
from tests.integration.test_bad_input import job_count
from tests.security import assert_problem, png_header_only
from workers.context import WorkerContext
from workers.runner import run_batch


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_a_long_user_is_422(http: FlaskClient, keys: Keys, settings: Settings) -> None:
    before = job_count(settings)
    body = {"model": "digits", "input": pixels(), "user": "u" * 257}
    problem = assert_problem(http.post("/v1/jobs", json=body, headers=auth(keys.alice)), 422)
    assert problem["errors"][0]["pointer"] == "/user"
    assert job_count(settings) == before


def test_an_oversized_authorization_header_is_401(http: FlaskClient, keys: Keys) -> None:
    response = http.get("/v1/models", headers=auth(keys.alice + "x" * 300))
    assert_problem(response, 401, "unauthorized")


def test_request_ids_are_bounded(http: FlaskClient, keys: Keys) -> None:
    response = http.get("/v1/models", headers={**auth(keys.alice), "X-Request-ID": "r" * 5000})
    assert response.headers["X-Request-ID"] == "r" * 128


def test_an_image_over_the_models_size_limit_is_422_even_under_a_larger_body_limit(
    settings: Settings, keys: Keys, digits_version: int
) -> None:
    http = create_app(settings.replace(max_body_bytes=4_000_000)).test_client()
    body = {"model": "digits", "input": {"image": "iVBORw0KGgo" + "A" * 2_000_001}}
    problem = assert_problem(http.post("/v1/jobs", json=body, headers=auth(keys.alice)), 422)
    assert problem["errors"][0]["pointer"] == "/input/image"


@pytest.fixture
def ctx(settings: Settings, digits_version: int) -> Iterator[WorkerContext]:
    context = WorkerContext.create(
        settings, f"limits-{uuid.uuid4().hex[:6]}@test", make_celery(settings)
    )
    yield context
    context.redis.close()


def test_a_decompression_bomb_fails_alone_in_the_worker(
    http: FlaskClient, keys: Keys, ctx: WorkerContext
) -> None:
    def submit(item: dict[str, object]) -> str:
        response = http.post(
            "/v1/jobs", json={"model": "digits", "input": item}, headers=auth(keys.alice)
        )
        assert response.status_code == 202, response.get_json()
        return str(response.get_json()["id"])

    good = [submit(p) for p, _ in holdout(2)]
    bomb = submit({"image": png_header_only(40_000, 40_000)})  # 1.6 gigapixels, 100 bytes
    results = {str(r.id): r for r in run_batch(ctx, [*good, bomb])}
    assert [results[g].status for g in good] == ["succeeded", "succeeded"]
    failed = http.get(f"/v1/jobs/{bomb}", headers=auth(keys.alice)).get_json()
    assert failed["status"] == "failed" and failed["attempts"] == 1
    assert failed["error"]["type"] == "invalid-input" and "too large" in failed["error"]["message"]
