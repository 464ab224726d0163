"""Webhooks against a real receiver on loopback: signed deliveries, retries, the delivery
log, redelivery, and the SSRF guard at submit and again at delivery."""

from __future__ import annotations

import dataclasses
import json
import socket
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from inferq.core.broker import make_celery
from inferq.core.settings import Settings
from inferq.domain.webhooks import ID_HEADER
from tests.conftest import Keys
from tests.factories import holdout, pixels
from tests.security import Receiver, assert_problem, make_key
from workers.context import WorkerContext
from workers.delivery import deliver
from workers.runner import run_batch


@pytest.fixture
def hook_settings(settings: Settings) -> Settings:
    return settings.replace(webhook_allowlist="127.0.0.1", webhook_max_attempts=3)


@pytest.fixture
def app(hook_settings: Settings, digits_version: int) -> Flask:
    return create_app(hook_settings)


@pytest.fixture
def ctx(hook_settings: Settings, digits_version: int) -> Iterator[WorkerContext]:
    context = WorkerContext.create(
        hook_settings, f"hooks-{uuid.uuid4().hex[:6]}@test", make_celery(hook_settings)
    )
    yield context
    context.redis.close()


@pytest.fixture
def secret(http: FlaskClient, settings: Settings) -> str:
    admin = make_key(settings, "alice", ["admin"])
    return str(http.get("/v1/webhooks/secret", headers=auth(admin)).get_json()["secret"])


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def finished_job(http: FlaskClient, ctx: WorkerContext, key: str, url: str) -> str:
    body = {"model": "digits", "input": holdout(1)[0][0], "webhook": url}
    response = http.post("/v1/jobs", json=body, headers=auth(key))
    assert response.status_code == 202, response.get_json()
    job_id = str(response.get_json()["id"])
    assert [r.status for r in run_batch(ctx, [job_id])] == ["succeeded"]
    return job_id


def log_of(http: FlaskClient, key: str, job_id: str) -> dict[str, Any]:
    response = http.get(f"/v1/jobs/{job_id}/webhooks", headers=auth(key))
    assert response.status_code == 200
    return response.get_json()  # type: ignore[no-any-return]


def test_a_finished_job_is_delivered_signed(
    http: FlaskClient, ctx: WorkerContext, keys: Keys, secret: str
) -> None:
    with Receiver().running() as receiver:
        receiver.secret = secret
        job_id = finished_job(http, ctx, keys.alice, receiver.url)
        outcome = deliver(ctx, job_id, 1, redelivery=False)
    assert outcome.ok and not outcome.retry
    (call,) = receiver.calls
    assert call["valid"], "the signature must verify with the tenant's secret"
    assert call["path"] == "/hooks/inferq?source=test"
    assert call["headers"][ID_HEADER] == f"evt_{job_id}"
    sent = json.loads(call["body"])
    assert sent["type"] == "job.succeeded" and sent["job"]["id"] == job_id
    assert sent["job"]["output"]["label"] == holdout(1)[0][1]
    log = log_of(http, keys.alice, job_id)
    assert log["status"] == "delivered" and log["url"] == receiver.url
    assert [(d["attempt"], d["ok"], d["status_code"]) for d in log["deliveries"]] == [
        (1, True, 200)
    ]
    # a duplicate message for a delivered webhook sends nothing
    assert deliver(ctx, job_id, 1, redelivery=False).ok and len(receiver.calls) == 1


def test_failures_are_retried_until_the_attempts_run_out(
    http: FlaskClient, ctx: WorkerContext, keys: Keys
) -> None:
    with Receiver(fail_first=10).running() as receiver:
        job_id = finished_job(http, ctx, keys.alice, receiver.url)
        outcomes = [deliver(ctx, job_id, n, redelivery=False) for n in (1, 2, 3)]
    assert [(o.ok, o.retry) for o in outcomes] == [(False, True), (False, True), (False, False)]
    assert len(receiver.calls) == 3
    log = log_of(http, keys.alice, job_id)
    assert log["status"] == "failed" and log["attempts"] == 3
    assert [d["status_code"] for d in log["deliveries"]] == [500, 500, 500]


def test_redirects_are_not_followed(http: FlaskClient, ctx: WorkerContext, keys: Keys) -> None:
    with Receiver().running() as target, Receiver(status=302).running() as redirecting:
        redirecting.location = target.url
        job_id = finished_job(http, ctx, keys.alice, redirecting.url)
        outcome = deliver(ctx, job_id, 1, redelivery=False)
    assert not outcome.ok and outcome.status_code == 302 and "redirect" in (outcome.error or "")
    assert len(redirecting.calls) == 1 and target.calls == []


def test_the_guard_runs_again_at_delivery_after_dns(
    http: FlaskClient, ctx: WorkerContext, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    strict = dataclasses.replace(ctx, settings=ctx.settings.replace(webhook_allowlist=""))
    real_lookup = socket.getaddrinfo

    def dns(host: Any, *args: Any, **kwargs: Any) -> Any:
        # what a DNS answer can say about any public-looking name
        return real_lookup("127.0.0.1" if host == "hooks.example.com" else host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", dns)
    with Receiver().running() as receiver:
        # a host name passes at submit; at delivery it resolves to loopback, not allowlisted
        url = receiver.url.replace("127.0.0.1", "hooks.example.com")
        job_id = finished_job(http, ctx, keys.alice, url)
        outcome = deliver(strict, job_id, 1, redelivery=False)
    assert not outcome.ok and not outcome.retry and "refused" in (outcome.error or "")
    assert receiver.calls == []
    (logged,) = log_of(http, keys.alice, job_id)["deliveries"]
    assert logged["status_code"] is None and "non-public" in logged["error"]


def test_redelivery_sends_the_same_event_again(
    http: FlaskClient, ctx: WorkerContext, keys: Keys
) -> None:
    with Receiver().running() as receiver:
        job_id = finished_job(http, ctx, keys.alice, receiver.url)
        deliver(ctx, job_id, 1, redelivery=False)
        asked = http.post(f"/v1/jobs/{job_id}/webhooks/redeliver", headers=auth(keys.alice))
        assert asked.status_code == 202 and asked.get_json()["redelivery"] == "queued"
        deliver(ctx, job_id, 1, redelivery=True)  # what the queued task runs
    first, second = receiver.calls
    assert first["headers"][ID_HEADER] == second["headers"][ID_HEADER]
    deliveries = log_of(http, keys.alice, job_id)["deliveries"]
    assert [(d["attempt"], d["redelivery"]) for d in deliveries] == [(1, False), (2, True)]


def test_redelivery_needs_a_finished_job_with_a_webhook(http: FlaskClient, keys: Keys) -> None:
    plain = http.post(
        "/v1/jobs", json={"model": "digits", "input": pixels()}, headers=auth(keys.alice)
    ).get_json()["id"]
    assert log_of(http, keys.alice, plain) == {
        "job_id": plain,
        "url": None,
        "status": None,
        "attempts": 0,
        "delivered_at": None,
        "deliveries": [],
    }
    assert_problem(http.post(f"/v1/jobs/{plain}/webhooks/redeliver", headers=auth(keys.alice)), 409)
    hooked = http.post(
        "/v1/jobs",
        json={"model": "digits", "input": pixels(), "webhook": "http://127.0.0.1:9/x"},
        headers=auth(keys.alice),
    ).get_json()["id"]
    assert log_of(http, keys.alice, hooked)["status"] == "pending"
    problem = assert_problem(
        http.post(f"/v1/jobs/{hooked}/webhooks/redeliver", headers=auth(keys.alice)), 409
    )
    assert "queued" in problem["detail"]


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1/x",
        "http://10.0.0.7/x",
        "http://169.254.169.254/latest/meta-data/",
        "http://[::1]:8080/",
        "http://user:secret@127.0.0.1/",
        "not a url",
        "",
        "https://x.example/" + "p" * 2048,
    ],
)
def test_unsafe_webhooks_are_422_at_submit(
    http: FlaskClient, keys: Keys, settings: Settings, url: str
) -> None:
    from tests.integration.test_bad_input import job_count

    before = job_count(settings)
    body = {"model": "digits", "input": pixels(), "webhook": url}
    problem = assert_problem(http.post("/v1/jobs", json=body, headers=auth(keys.alice)), 422)
    assert problem["errors"][0]["pointer"] == "/webhook"
    assert job_count(settings) == before


@pytest.mark.parametrize(
    "url",
    [
        "http://2130706433/",
        "http://0177.0.0.1/",
        "http://0x7f.0.0.1/",
        "http://127.1/",
        "http://0/",
        "http://localhost:8080/",
        "http://LOCALHOST./",
        "http://[::127.0.0.1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://[64:ff9b::7f00:1]/",
        "http://[64:ff9b:1::7f00:1]/",
        "http://[2002:7f00:1::]/",
        "http://[2001:0:7f00:1::f5ff:fffe]/",
    ],
)
def test_every_spelling_of_loopback_is_422_at_submit(
    settings: Settings, digits_version: int, keys: Keys, url: str
) -> None:
    from tests.integration.test_bad_input import job_count

    # Given an API node with no allowlist (the default)
    http = create_app(settings.replace(webhook_allowlist="")).test_client()
    before = job_count(settings)
    # When a job names a webhook on loopback, spelt as some resolver or router reads it
    body = {"model": "digits", "input": pixels(), "webhook": url}
    problem = assert_problem(http.post("/v1/jobs", json=body, headers=auth(keys.alice)), 422)
    # Then it is refused with a problem that says why, and no job exists
    assert problem["errors"][0]["pointer"] == "/webhook"
    assert "non-public" in problem["detail"] or "this machine" in problem["detail"]
    assert job_count(settings) == before


def webhook_messages(settings: Settings) -> int:
    """Messages waiting on this run's webhooks lane (Redis transport: a list per queue)."""
    from inferq.core.broker import queue_name
    from inferq.core.status import make_redis

    client = make_redis(settings)
    try:
        return int(client.llen(f"{settings.namespace}:{queue_name(settings, 'webhooks')}"))
    finally:
        client.close()


def test_a_job_canceled_while_queued_has_its_webhook_queued(
    http: FlaskClient, keys: Keys, hook_settings: Settings
) -> None:
    body = {"model": "digits", "input": pixels(9.0), "webhook": "http://127.0.0.1:9/c"}
    job_id = http.post("/v1/jobs", json=body, headers=auth(keys.alice)).get_json()["id"]
    before = webhook_messages(hook_settings)
    assert http.post(f"/v1/jobs/{job_id}/cancel", headers=auth(keys.alice)).status_code == 200
    assert webhook_messages(hook_settings) == before + 1
    plain = http.post(
        "/v1/jobs", json={"model": "digits", "input": pixels(9.0)}, headers=auth(keys.alice)
    ).get_json()["id"]
    http.post(f"/v1/jobs/{plain}/cancel", headers=auth(keys.alice))
    assert webhook_messages(hook_settings) == before + 1
