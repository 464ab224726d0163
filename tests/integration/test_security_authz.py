"""Object- and function-level authorisation over every ``/v1`` endpoint, two tenants.

The sweep walks the app's URL map, so an endpoint added later is covered the day it lands:
it must declare a scope, refuse missing, revoked and expired keys, refuse keys without its
scope, and answer another tenant's job ids with 404. What every tenant shares (models,
versions, experiments, retraining, the fleet's stats and scaling) needs the operator scope:
a tenant's admin key, with every tenant scope, is refused there.
"""

from __future__ import annotations

import datetime as dt
import re
import time
import uuid
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from db.keys import OPERATOR, SCOPES
from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.factories import pixels
from tests.integration.conftest import Caller
from tests.security import assert_problem, make_key

PARAM = re.compile(r"<(?:(\w+):)?(\w+)>")


def endpoints(app: Flask) -> list[tuple[str, str, str, str | None]]:
    """``(rule, method, endpoint, scope)`` for every /v1 route and method."""
    found = []
    for rule in app.url_map.iter_rules():
        if not rule.rule.startswith("/v1/"):
            continue
        scope = getattr(app.view_functions[rule.endpoint], "required_scope", None)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            found.append((rule.rule, method, rule.endpoint, scope))
    return found


def fill(rule: str, job_id: str) -> str:
    def value(match: re.Match[str]) -> str:
        converter, name = match.groups()
        if name == "job_id":
            return job_id
        if converter == "int":
            return "1"
        return str(uuid.uuid4()) if name.endswith("_id") else "digits"

    return PARAM.sub(value, rule)


def call(http: FlaskClient, method: str, path: str, key: str | None, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if method == "GET":
        return http.get(path, headers=headers)
    return http.open(path, method=method, json={} if body is None else body, headers=headers)


@pytest.fixture
def app(settings: Settings, digits_version: int) -> Flask:
    # Webhooks to a closed loopback port: nothing here ever reaches beyond this machine.
    return create_app(settings.replace(webhook_allowlist="127.0.0.1"))


@pytest.fixture
def alices_job(alice: Caller) -> str:
    """A finished (canceled) job of alice's with a webhook: every job endpoint applies."""
    response = alice.post(
        "/v1/jobs", {"model": "digits", "input": pixels(3.0), "webhook": "http://127.0.0.1:9/h"}
    )
    assert response.status_code == 202, response.get_json()
    job_id = str(response.get_json()["id"])
    assert alice.post(f"/v1/jobs/{job_id}/cancel").get_json()["status"] == "canceled"
    return job_id


def test_every_v1_endpoint_declares_a_scope(app: Flask) -> None:
    routes = endpoints(app)
    assert len(routes) >= 8
    unprotected = [(rule, method) for rule, method, _, scope in routes if scope not in SCOPES]
    assert unprotected == []


def test_missing_revoked_and_expired_keys_are_401_everywhere(
    app: Flask, http: FlaskClient, keys: Keys, alices_job: str
) -> None:
    for rule, method, _, _ in endpoints(app):
        path = fill(rule, alices_job)
        for key in (None, keys.revoked, keys.expired, "iq_" + "x" * 43):
            response = call(http, method, path, key)
            assert_problem(response, 401, "unauthorized")
            assert response.headers["WWW-Authenticate"].startswith("Bearer")


#: What only an operator's key changes or sees: everything every tenant shares.
OPERATOR_ENDPOINTS = {
    "models.create",
    "models.add_version",
    "models.promote_version",
    "models.rollback_version",
    "experiments.create",
    "experiments.index",
    "experiments.show",
    "experiments.stop",
    "training.retrain",
    "stats.show",
    "scaling.show",
}


def test_what_every_tenant_shares_needs_the_operator_scope(app: Flask) -> None:
    operated = {endpoint for _, _, endpoint, scope in endpoints(app) if scope == OPERATOR}
    assert operated == OPERATOR_ENDPOINTS
    # a tenant's admin keeps what is its own
    admin = {endpoint for _, _, endpoint, scope in endpoints(app) if scope == "admin"}
    assert admin == {"webhooks.secret", "webhooks.rotate"}


def test_a_key_without_the_scope_is_403_everywhere(
    app: Flask, http: FlaskClient, settings: Settings, keys: Keys, alices_job: str
) -> None:
    tenant_admin = make_key(settings, "alice", ["submit", "read", "admin"])
    lacking = {
        "submit": keys.alice_read_only,
        "read": keys.alice_submit_only,
        "admin": keys.alice,
        OPERATOR: tenant_admin,
    }
    for rule, method, _, scope in endpoints(app):
        assert scope is not None
        response = call(http, method, fill(rule, alices_job), lacking[scope])
        body = assert_problem(response, 403, "forbidden")
        assert scope in body["detail"]


def test_an_operator_key_passes_every_operator_scope_check(
    app: Flask, http: FlaskClient, operator_key: str, alices_job: str
) -> None:
    # Reads and refused changes only (unknown ids, empty bodies): nothing shared is changed
    changes = {"models.promote_version", "models.rollback_version", "training.retrain"}
    for rule, method, endpoint, scope in endpoints(app):
        if scope != OPERATOR or endpoint in changes:
            continue
        response = call(http, method, fill(rule, alices_job), operator_key)
        assert response.status_code not in (401, 403), (rule, method, response.get_json())


def test_another_tenants_job_is_404_everywhere_even_for_its_admin(
    app: Flask, http: FlaskClient, settings: Settings, keys: Keys, alices_job: str
) -> None:
    bob_admin = make_key(settings, "bob", ["submit", "read", "admin"])
    alice_admin = make_key(settings, "alice", ["submit", "read", "admin"])
    bodies = {"jobs.feedback": {"label": 3}}
    job_routes = [r for r in endpoints(app) if "<job_id>" in r[0]]
    assert {e for _, _, e, _ in job_routes} >= {
        "jobs.get_job",
        "jobs.cancel",
        "jobs.feedback",
        "webhooks.deliveries",
        "webhooks.redeliver",
    }
    for rule, method, endpoint, _ in job_routes:
        path = fill(rule, alices_job)
        for key in (keys.bob, bob_admin):
            assert_problem(call(http, method, path, key, bodies.get(endpoint)), 404, "not-found")
        # the owner reaches the same job: the 404 above is about the tenant, nothing else
        assert call(http, method, path, alice_admin, bodies.get(endpoint)).status_code != 404
    assert_problem(http.get(f"/v1/jobs/{alices_job}?wait=1", headers=auth(keys.bob)), 404)


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_feedback_and_the_job_are_untouched_by_another_tenant(
    http: FlaskClient, keys: Keys, alices_job: str
) -> None:
    before = http.get(f"/v1/jobs/{alices_job}", headers=auth(keys.alice)).get_json()
    http.post(f"/v1/jobs/{alices_job}/feedback", json={"label": 1}, headers=auth(keys.bob))
    http.post(f"/v1/jobs/{alices_job}/cancel", headers=auth(keys.bob))
    http.post(f"/v1/jobs/{alices_job}/webhooks/redeliver", headers=auth(keys.bob))
    after = http.get(f"/v1/jobs/{alices_job}", headers=auth(keys.alice)).get_json()
    assert after == before
    log = http.get(f"/v1/jobs/{alices_job}/webhooks", headers=auth(keys.alice)).get_json()
    assert log["deliveries"] == []


def test_each_tenant_has_its_own_webhook_secret(
    http: FlaskClient, settings: Settings, keys: Keys
) -> None:
    alice_admin = make_key(settings, "alice", ["read", "admin"])
    bob_admin = make_key(settings, "bob", ["admin"])
    alices = http.get("/v1/webhooks/secret", headers=auth(alice_admin)).get_json()["secret"]
    bobs = http.get("/v1/webhooks/secret", headers=auth(bob_admin)).get_json()["secret"]
    assert alices.startswith("whsec_") and bobs.startswith("whsec_") and alices != bobs
    assert http.get("/v1/webhooks/secret", headers=auth(alice_admin)).get_json()["secret"] == alices
    rotated = http.post("/v1/webhooks/secret/rotate", headers=auth(alice_admin)).get_json()
    assert rotated["secret"] not in (alices, bobs)
    assert http.get("/v1/webhooks/secret", headers=auth(bob_admin)).get_json()["secret"] == bobs


def test_a_key_that_expires_stops_working(http: FlaskClient, settings: Settings) -> None:
    soon = dt.datetime.now(dt.timezone.utc) + dt.timedelta(seconds=3)
    key = make_key(settings, "alice", ["read"], expires_at=soon)
    assert http.get("/v1/models", headers=auth(key)).status_code == 200
    time.sleep(max(0.0, (soon - dt.datetime.now(dt.timezone.utc)).total_seconds()) + 0.2)
    assert_problem(http.get("/v1/models", headers=auth(key)), 401, "unauthorized")


def test_keys_are_high_entropy_prefixed_and_stored_only_as_hashes(
    settings: Settings, keys: Keys
) -> None:
    from sqlalchemy import create_engine, text

    assert keys.alice.startswith("iq_") and len(keys.alice) >= 40
    engine = create_engine(settings.database_url or "")
    with engine.connect() as conn:
        stored = [tuple(r) for r in conn.execute(text("SELECT key_hash, prefix FROM api_keys"))]
    engine.dispose()
    assert all(keys.alice not in row and len(row[0]) == 64 for row in stored)
    assert any(row[1] == keys.alice[:10] for row in stored)
