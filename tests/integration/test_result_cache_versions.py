"""The result cache answers an input only for the version that computed it, on the session's
real Postgres and Redis: the API asks the cache, ``run_batch`` fills it in-process.

The key holds the version's id and its weights' digest (``inferq.domain.result_cache``
``cache_key``). Each test first shows the cache answering a repeat (so it is on and filled),
then changes what serves the input and checks the old output is not served.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

import pytest
import torch
from flask.testing import FlaskClient
from sqlalchemy import text

from api.app import create_app
from db.registry import get_model
from inferq.core.broker import make_celery
from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.factories import Artifact, digits_variants, experiment_model, holdout, stored_version
from tests.integration.conftest import Caller
from workers.context import WorkerContext
from workers.handlers.digits import DigitsHandler
from workers.runner import run_batch


class ReversedDigits(DigitsHandler):
    """digits' weights read backwards: label ``9 - l``, probabilities reversed. Another
    handler on the same weights answers differently."""

    name = "reversed-digits"

    def predict(self, batch: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        return [
            {"label": 9 - out["label"], "probabilities": out["probabilities"][::-1]}
            for out in super().predict(batch)
        ]


@pytest.fixture
def cached(settings: Settings) -> Settings:
    return settings.replace(cache_ttl_s=60)


@pytest.fixture
def ctx(cached: Settings, digits_version: int) -> Iterator[WorkerContext]:
    context = WorkerContext.create(
        cached, f"cache-{uuid.uuid4().hex[:6]}@test", make_celery(cached)
    )
    yield context
    context.redis.close()


@pytest.fixture
def http(cached: Settings, digits_version: int) -> FlaskClient:
    return create_app(cached).test_client()


@pytest.fixture
def alice(http: FlaskClient, keys: Keys) -> Caller:
    return Caller(http, keys.alice)


@pytest.fixture
def operator(http: FlaskClient, operator_key: str) -> Caller:
    return Caller(http, operator_key)


def submit(caller: Caller, model: str, body: dict[str, Any], user: str | None = None) -> Any:
    request: dict[str, Any] = {"model": model, "input": body}
    if user is not None:
        request["user"] = user
    response = caller.post("/v1/jobs", request)
    assert response.status_code in (200, 202), response.get_json()
    return response.get_json()


def answered(caller: Caller, ctx: WorkerContext, model: str, body: dict[str, Any]) -> Any:
    """Submit ``body`` to ``model``, run it on the worker, return the finished job."""
    job = submit(caller, model, body)
    assert job["cached"] is False, job
    run_batch(ctx, [job["id"]])
    done = caller.get(f"/v1/jobs/{job['id']}").get_json()
    assert done["status"] == "succeeded", done
    return done


def assert_cache_answers(caller: Caller, model: str, body: dict[str, Any], output: Any) -> None:
    """The cache is on and filled: a repeat is born finished with ``output``."""
    again = submit(caller, model, body)
    assert again["cached"] is True and again["output"] == output, again


def model_of(settings: Settings, handler: str, artifact: Artifact) -> str:
    """A fresh model served by ``handler`` with ``artifact`` as its one, active version."""
    from db.registry import ensure_model
    from inferq.cli.common import db_session

    name = f"cache-{uuid.uuid4().hex[:8]}"
    with db_session(settings) as session:
        model = ensure_model(
            session,
            name,
            handler,
            DigitsHandler.input_schema,
            dict(DigitsHandler.default_config),
            DigitsHandler.label_schema,
        )
        stored_version(session, settings, model, artifact.data, metrics={}, activate=True)
    return name


def test_after_a_promotion_the_old_versions_cached_output_is_not_served(
    alice: Caller, operator: Caller, ctx: WorkerContext
) -> None:
    """Catches: ``cache_key`` without the version (id and digest): the input alone keyed."""
    # Given an input answered by v1, whose output the cache now holds
    variants = digits_variants()
    model = experiment_model(ctx.settings, [variants["good"], variants["bad"]], active=1)
    body = holdout(1)[0][0]
    first = answered(alice, ctx, model, body)
    assert first["version"] == 1
    assert_cache_answers(alice, model, body, first["output"])
    # When v2, other weights, is promoted
    response = operator.post(f"/v1/models/{model}/versions/2/promote", {"reason": "test"})
    assert response.status_code == 200, response.get_json()
    # Then the same input is not answered from v1's cache: v2 computes it
    second = answered(alice, ctx, model, body)
    assert second["version"] == 2 and second["output"] != first["output"]
    # and from now on the cache answers with v2's output
    assert_cache_answers(alice, model, body, second["output"])


def test_an_experiment_arm_is_not_answered_from_the_control_versions_cache(
    alice: Caller, operator: Caller, ctx: WorkerContext
) -> None:
    """Catches: ``cache_key`` without the version (id and digest): while an A/B experiment
    runs, users in the candidate's arm would get the control's cached outputs."""
    # Given an input answered by the active v1
    variants = digits_variants()
    model = experiment_model(ctx.settings, [variants["good"], variants["bad"]], active=1)
    body = holdout(2)[1][0]
    first = answered(alice, ctx, model, body)
    # When an A/B experiment sends users to v1 or v2, and users send that input
    response = operator.post(
        "/v1/experiments", {"model": model, "arms": [{"version": 1}, {"version": 2}]}
    )
    assert response.status_code == 201, response.get_json()
    by_arm: dict[str, list[Any]] = {"A": [], "B": []}
    for i in range(64):  # until each arm has a few users (assignment hashes the user)
        job = submit(alice, model, body, user=f"cache-user-{i}")
        by_arm[job["experiment"]["arm"]].append(job)
        if min(len(jobs) for jobs in by_arm.values()) >= 3:
            break
    assert min(len(jobs) for jobs in by_arm.values()) >= 3, "64 users all but in one arm"
    # Then v1's arm is answered from its cache, and v2's arm is not: it waits for a worker
    assert all(j["cached"] and j["output"] == first["output"] for j in by_arm["A"])
    assert all(j["version"] == 2 and not j["cached"] for j in by_arm["B"]), by_arm["B"]
    run_batch(ctx, [j["id"] for j in by_arm["B"]])
    outputs = [alice.get(f"/v1/jobs/{j['id']}").get_json()["output"] for j in by_arm["B"]]
    assert all(out is not None and out != first["output"] for out in outputs)


def test_models_sharing_weights_do_not_share_cached_outputs(
    alice: Caller, ctx: WorkerContext
) -> None:
    """Two models may serve the same weights through different handlers.

    Catches: the version id dropped from ``cache_key`` (the weights' digest alone keyed).
    """
    # Given digits weights served by the digits handler, whose output for an input is cached
    good = digits_variants()["good"]
    plain = model_of(ctx.settings, "digits", good)
    backwards = model_of(ctx.settings, f"{__name__}:ReversedDigits", good)
    body = holdout(3)[2][0]
    first = answered(alice, ctx, plain, body)
    assert_cache_answers(alice, plain, body, first["output"])
    # When the same input goes to a model with the same weights and another handler
    other = answered(alice, ctx, backwards, body)
    # Then its own handler answered it, not the other model's cache
    assert other["output"]["label"] == 9 - first["output"]["label"]
    assert other["output"]["probabilities"] == first["output"]["probabilities"][::-1]


def test_a_version_id_standing_for_other_weights_is_not_answered_from_the_cache(
    alice: Caller, cached: Settings, ctx: WorkerContext
) -> None:
    """A version id can come to stand for other weights (a database rebuilt or restored
    under a Redis whose cache outlived it: ids start again); the digest tells them apart.

    Catches: the weights' digest dropped from ``cache_key`` (the version id alone keyed).
    """
    # Given an input answered by a version, whose output the cache holds
    variants = digits_variants()
    model = experiment_model(ctx.settings, [variants["good"]], active=1)
    body = holdout(4)[3][0]
    first = answered(alice, ctx, model, body)
    assert_cache_answers(alice, model, body, first["output"])
    # When that version's row now holds other weights under the same id
    bad = variants["bad"]
    with ctx.sessions.begin() as session:
        other = get_model(session, model)
        assert other is not None
        scratch = stored_version(session, ctx.settings, other, bad.data, activate=False)
        changed = session.execute(
            text(
                "UPDATE model_versions SET artifact_uri = :uri, sha256 = :sha, files = CAST(:files"
                " AS jsonb), size_bytes = :size WHERE id = :id"
            ),
            {
                "uri": scratch.artifact_uri,
                "sha": bad.sha256,
                "files": json.dumps(scratch.files),
                "size": len(bad.data),
                "id": other.active_version_id,
            },
        )
        assert changed.rowcount == 1
    # Then the same input is not answered from the cache: the new weights compute it
    fresh = WorkerContext.create(cached, f"cache-{uuid.uuid4().hex[:6]}@test", make_celery(cached))
    try:
        second = answered(alice, fresh, model, body)
    finally:
        fresh.redis.close()
    assert second["version"] == first["version"] and second["output"] != first["output"]
