"""An in-process API app on the real Postgres and Redis of the session."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient
from sqlalchemy import Engine

from api.app import create_app
from inferq.core.broker import queue_name
from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.integration.test_submit_round_trips import CountingConnection
from tests.s3 import s3_endpoint  # noqa: F401 (a fixture: a moto S3 server)


@pytest.fixture(autouse=True)
def _close_api_pools(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Close the connection pool of every API app a test built, when the test ends.

    An app's group threads (api.services.grouping) hold its pool until they have been idle a
    few seconds; dozens of apps built in quick succession would otherwise keep their idle
    connections open meanwhile, past what the shared Postgres allows."""
    import api.app

    engines: list[Engine] = []
    real = api.app.make_engine

    def tracked(*args: Any, **kwargs: Any) -> Engine:
        engine = real(*args, **kwargs)
        engines.append(engine)
        return engine

    monkeypatch.setattr(api.app, "make_engine", tracked)
    yield
    for engine in engines:
        engine.dispose()


@pytest.fixture
def app(settings: Settings, digits_version: int) -> Flask:
    return create_app(settings)


@pytest.fixture
def http(app: Flask) -> FlaskClient:
    return app.test_client()


class Caller:
    """A test client that sends one tenant's key."""

    def __init__(self, http: FlaskClient, key: str) -> None:
        self.http = http
        self.key = key

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **(extra or {})}

    def post(self, path: str, body: Any = None, **kwargs: Any) -> Any:
        return self.http.post(
            path, json=body, headers=self.headers(kwargs.pop("headers", None)), **kwargs
        )

    def get(self, path: str, **kwargs: Any) -> Any:
        return self.http.get(path, headers=self.headers(kwargs.pop("headers", None)), **kwargs)


@pytest.fixture
def alice(http: FlaskClient, keys: Keys) -> Caller:
    return Caller(http, keys.alice)


@pytest.fixture
def bob(http: FlaskClient, keys: Keys) -> Caller:
    return Caller(http, keys.bob)


@pytest.fixture
def operator(http: FlaskClient, operator_key: str) -> Caller:
    """A caller with an operator's key (every scope)."""
    return Caller(http, operator_key)


@pytest.fixture
def no_worker() -> Iterator[None]:
    """Marks tests that rely on no worker consuming this run's queues (jobs stay queued)."""
    yield


def queued_task_args(settings: Settings, lane: str, task: str) -> list[list[Any]]:
    """The positional arguments of each ``task`` message waiting on ``lane`` (read, not
    consumed)."""
    client = redis.Redis.from_url(settings.effective_redis_url)
    key = f"{settings.namespace}:{queue_name(settings, lane)}"
    found = []
    for raw in client.lrange(key, 0, -1):
        message = json.loads(raw)
        if message["headers"].get("task") == task:
            args, _, _ = json.loads(base64.b64decode(message["body"]))
            found.append(args)
    client.close()
    return found


@pytest.fixture
def counting_redis(settings: Settings) -> Iterator[redis.Redis]:
    """A client of this run's Redis whose round trips are listed in
    ``CountingConnection.sends`` (emptied first)."""
    CountingConnection.sends = []
    pool = redis.ConnectionPool.from_url(
        settings.effective_redis_url, connection_class=CountingConnection
    )
    yield redis.Redis(connection_pool=pool)
    pool.disconnect()
