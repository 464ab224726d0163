"""Finding (or starting) the Postgres, Redis and RabbitMQ the tests run against.

Real servers on 127.0.0.1 are used when they answer (CI and developer machines have them);
otherwise embedded Postgres and Redis are started from PyPI packages. RabbitMQ tests skip
without a server locally, but never in CI: there every guard fails instead (``unavailable``),
and a skip of any other kind fails the run too (tests/conftest.py).
"""

from __future__ import annotations

import dataclasses
import os
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlsplit

import pytest
import redis
from sqlalchemy import create_engine, text

from inferq.local.embedded import reachable, start_postgres, start_redis

CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def unavailable(reason: str) -> NoReturn:
    """What a test needs is missing: skip locally, fail in CI (where .ci/run installs it)."""
    if CI:
        pytest.fail(f"CI: {reason}", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def _answers(url: str, default_port: int) -> bool:
    parts = urlsplit(url)
    return reachable(parts.hostname or "127.0.0.1", parts.port or default_port)


@dataclasses.dataclass
class Services:
    """Server URLs for the session, and how to stop what we started."""

    postgres_url: str
    redis_url: str
    amqp_url: str | None
    stoppers: list[Callable[[], None]] = dataclasses.field(default_factory=list)

    def stop(self) -> None:
        for stop in reversed(self.stoppers):
            stop()


def find_services(scratch: Path) -> Services:
    """Real servers when reachable, embedded ones otherwise."""
    stoppers: list[Callable[[], None]] = []
    pg = os.environ.get(
        "INFERQ_TEST_POSTGRES_URL", "postgresql+psycopg2://postgres@127.0.0.1:5432/postgres"
    )
    if not _answers(pg, 5432):
        if CI:
            raise RuntimeError(f"CI: Postgres at {pg} does not answer")
        embedded = start_postgres(scratch / "postgres")
        pg, _ = embedded.url, stoppers.append(embedded.stop)
    rd = os.environ.get("INFERQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
    if not _answers(rd, 6379):
        if CI:
            raise RuntimeError(f"CI: Redis at {rd} does not answer")
        embedded = start_redis(scratch / "redis")
        rd, _ = embedded.url, stoppers.append(embedded.stop)
    amqp: str | None = os.environ.get("INFERQ_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672//")
    if not _answers(amqp, 5672):
        amqp = None
    return Services(pg, rd, amqp, stoppers)


def create_database(admin_url: str) -> tuple[str, Callable[[], None]]:
    """A fresh database on the server of ``admin_url``; returns its URL and a dropper."""
    name = f"inferq_test_{uuid.uuid4().hex[:10]}"
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()

    return url, drop


def wipe_redis(url: str, namespace: str) -> None:
    """Delete every key of ``namespace``."""
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    for start in range(0, len(keys), 500):
        client.delete(*keys[start : start + 500])
    client.close()


def delete_amqp_queues(url: str, namespace: str, lanes: tuple[str, ...]) -> None:
    """Remove the namespace's queues and exchange from RabbitMQ."""
    from kombu import Connection

    with Connection(url, connect_timeout=5) as conn:
        channel = conn.channel()
        for lane in lanes:
            channel.queue_delete(f"{namespace}.{lane}")
        channel.exchange_delete(namespace)
