"""Quotas on real Redis and Postgres: a per-key token bucket, a per-tenant queued-job limit
and a per-lane backlog limit, each answering with ``Retry-After`` and creating nothing."""

from __future__ import annotations

import time
import uuid
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import create_engine, func, select
from sqlalchemy.orm import Session

from api.app import create_app
from db.quotas import queued_jobs_in_lane
from db.tables import Job
from inferq.core.settings import Settings
from tests.factories import pixels
from tests.security import assert_problem, make_key


def client(settings: Settings, **changes: Any) -> FlaskClient:
    return create_app(settings.replace(**changes)).test_client()


def auth(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def jobs_of(settings: Settings, **where: Any) -> int:
    engine = create_engine(settings.database_url or "")
    with engine.connect() as conn:
        query = select(func.count()).select_from(Job)
        for name, value in where.items():
            query = query.where(getattr(Job, name) == value)
        count = conn.scalar(query) or 0
    engine.dispose()
    return count


def submit(http: FlaskClient, key: str, lane: str = "online") -> Any:
    body = {"model": "digits", "input": pixels(2.0), "lane": lane}
    return http.post("/v1/jobs", json=body, headers=auth(key))


def test_a_key_over_its_rate_gets_429_with_retry_after(
    settings: Settings, digits_version: int
) -> None:
    # one token back every 4 s: the four requests below fit in that however slow the machine
    http = client(settings, key_rate_per_s=0.25, key_rate_burst=3)
    key, other = make_key(settings, "alice", ["read"]), make_key(settings, "alice", ["read"])
    remaining = []
    for _ in range(3):
        response = http.get("/v1/models", headers=auth(key))
        assert response.status_code == 200
        assert response.headers["RateLimit-Limit"] == "3"
        remaining.append(int(response.headers["RateLimit-Remaining"]))
    assert remaining == [2, 1, 0]
    refused = http.get("/v1/models", headers=auth(key))
    problem = assert_problem(refused, 429, "rate-limited")
    assert "rate" in problem["detail"]
    retry_after = int(refused.headers["Retry-After"])
    assert 1 <= retry_after <= 4
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert retry_after <= int(refused.headers["RateLimit-Reset"]) <= 12
    # another key of the same tenant has its own bucket
    assert http.get("/v1/models", headers=auth(other)).status_code == 200
    time.sleep(retry_after)  # as told: by then a token is back
    assert http.get("/v1/models", headers=auth(key)).status_code == 200


def test_the_bucket_is_shared_by_every_api_node(settings: Settings, digits_version: int) -> None:
    nodes = [client(settings, key_rate_per_s=0.1, key_rate_burst=2) for _ in range(2)]
    key = make_key(settings, "alice", ["read"])
    codes = [nodes[i % 2].get("/v1/models", headers=auth(key)).status_code for i in range(4)]
    assert codes == [200, 200, 429, 429]


def test_a_tenant_over_its_queued_jobs_gets_429_and_nothing_is_created(
    settings: Settings, digits_version: int
) -> None:
    http = client(settings, tenant_max_queued=2, admission_cache_s=0.0)
    tenant = f"carol-{uuid.uuid4().hex[:6]}"
    key = make_key(settings, tenant, ["submit", "read"])
    first = [submit(http, key).get_json()["id"] for _ in range(2)]
    before = jobs_of(settings)
    refused = submit(http, key)
    assert_problem(refused, 429, "rate-limited")
    assert int(refused.headers["Retry-After"]) > 0
    assert jobs_of(settings) == before
    # another tenant is not affected, and the tenant may submit again once a job leaves the queue
    assert (
        submit(http, make_key(settings, f"dave-{uuid.uuid4().hex[:6]}", ["submit"])).status_code
        == 202
    )
    http.post(f"/v1/jobs/{first[0]}/cancel", headers=auth(key))
    assert submit(http, key).status_code == 202


def test_a_lane_past_its_backlog_gets_503_with_retry_after(
    settings: Settings, digits_version: int
) -> None:
    engine = create_engine(settings.database_url or "")
    with engine.connect() as conn:
        waiting = queued_jobs_in_lane(Session(conn), "batch", 1_000_000)
    engine.dispose()
    http = client(settings, lane_backlogs=f"batch={waiting + 1}", admission_cache_s=0.0)
    key = make_key(settings, "alice", ["submit"])
    assert submit(http, key, lane="batch").status_code == 202
    before = jobs_of(settings, lane="batch")
    refused = submit(http, key, lane="batch")
    problem = assert_problem(refused, 503, "service-unavailable")
    assert "batch" in problem["detail"] and int(refused.headers["Retry-After"]) > 0
    assert jobs_of(settings, lane="batch") == before
    # the online lane has its own limit
    assert submit(http, key, lane="online").status_code == 202


@pytest.mark.parametrize(
    "changes",
    [{"key_rate_per_s": -1.0}, {"webhook_max_attempts": 0}, {"lane_backlogs": "express=5"}],
)
def test_quota_settings_are_checked(settings: Settings, changes: dict[str, Any]) -> None:
    from inferq.core.errors import ConfigError

    with pytest.raises(ConfigError):
        settings.replace(**changes).validate()
