"""Embedded Postgres and Redis: they start, answer, keep their data, and stop."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
import redis
import sqlalchemy as sa

from inferq.core.settings import Settings
from inferq.local.embedded import (
    EmbeddedError,
    EmbeddedService,
    free_port,
    needs_redis,
    plan_redis,
    reachable,
    recorded_port,
    redis_changes,
    sqlalchemy_url,
    start_postgres,
    start_redis,
)


@pytest.fixture
def cleanup() -> Iterator[list[EmbeddedService]]:
    services: list[EmbeddedService] = []
    yield services
    for service in reversed(services):
        service.stop()


def query(url: str, sql: str) -> list[tuple[object, ...]]:
    engine = sa.create_engine(url)
    try:
        with engine.begin() as conn:
            result = conn.execute(sa.text(sql))
            return [tuple(row) for row in result] if result.returns_rows else []
    finally:
        engine.dispose()


def test_reachable_tells_a_listening_port_from_a_closed_one() -> None:
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert reachable("127.0.0.1", port)
    assert not reachable("127.0.0.1", port)


def test_sqlalchemy_url_keeps_the_socket_directory_of_a_libpq_uri() -> None:
    url = sqlalchemy_url("postgresql://postgres:@/postgres?host=/tmp/my data/pg")

    parsed = sa.make_url(url)
    assert parsed.drivername == "postgresql+psycopg2"
    assert parsed.username == "postgres"
    assert parsed.password is None
    assert parsed.database == "postgres"
    assert parsed.query == {"host": "/tmp/my data/pg"}


def test_sqlalchemy_url_keeps_host_and_port_of_a_tcp_uri() -> None:
    parsed = sa.make_url(sqlalchemy_url("postgresql://postgres:@127.0.0.1:5433/postgres"))

    assert (parsed.host, parsed.port, parsed.database) == ("127.0.0.1", 5433, "postgres")


def test_redis_answers_keeps_its_data_and_stops(tmp_path: Path, cleanup: list) -> None:
    # Given a running embedded Redis holding one key
    service = start_redis(tmp_path / "redis")
    cleanup.append(service)
    port = redis.Redis.from_url(service.url).connection_pool.connection_kwargs["port"]
    assert service.url == f"redis://127.0.0.1:{port}/0"
    client = redis.Redis.from_url(service.url)
    client.set("answer", "42")
    client.close()

    # When it is stopped and started again on the same folder
    service.stop()
    assert not reachable("127.0.0.1", port)
    again = start_redis(tmp_path / "redis", port=port)
    cleanup.append(again)

    # Then the key is still there
    client = redis.Redis.from_url(again.url)
    assert client.get("answer") == b"42"
    client.close()


def test_redis_stop_twice_is_harmless(tmp_path: Path) -> None:
    service = start_redis(tmp_path / "redis")
    service.stop()
    service.stop()


def test_redis_on_a_taken_port_fails_clearly(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(EmbeddedError, match="taken"):
            start_redis(tmp_path / "redis", port=taken.getsockname()[1])
    assert not redis_processes_in(tmp_path)


def test_redis_left_behind_by_a_crashed_run_is_replaced(tmp_path: Path, cleanup: list) -> None:
    # Given a Redis whose owner died without stopping it (its stop is never called)
    orphan = start_redis(tmp_path / "redis")
    orphan_pid = int((tmp_path / "redis" / "redis.pid").read_text())

    # When a new run starts Redis on the same folder
    cleanup.append(start_redis(tmp_path / "redis", port=free_port()))

    # Then the orphan is gone and only the new server writes the append-only file
    assert not psutil.pid_exists(orphan_pid) or psutil.Process(orphan_pid).status() == "zombie"
    assert len(redis_processes_in(tmp_path)) == 1
    orphan.stop()


def test_postgres_answers_keeps_its_data_and_stops(tmp_path: Path, cleanup: list) -> None:
    # Given a running embedded Postgres with one row in a table
    service = start_postgres(tmp_path / "postgres")
    cleanup.append(service)
    assert service.url.startswith("postgresql+psycopg2://")
    query(service.url, "CREATE TABLE notes (body text); INSERT INTO notes VALUES ('kept')")
    postmaster = postmaster_pid(tmp_path / "postgres")

    # When it is stopped and started again on the same folder
    service.stop()
    assert not psutil.pid_exists(postmaster)
    again = start_postgres(tmp_path / "postgres")
    cleanup.append(again)

    # Then the row is still there
    assert query(again.url, "SELECT body FROM notes") == [("kept",)]


def postmaster_pid(data_dir: Path) -> int:
    return int((data_dir / "postmaster.pid").read_text().splitlines()[0])


def redis_processes_in(folder: Path) -> list[psutil.Process]:
    # redis-server rewrites its command line, but it runs in its --dir.
    return [
        process
        for process in psutil.process_iter(["name", "cwd"])
        if "redis-server" in (process.info["name"] or "")
        and (process.info["cwd"] or "").startswith(str(folder))
    ]


EMBEDDED = "redis://127.0.0.1:6399/0"


def test_with_nothing_configured_the_embedded_redis_is_broker_and_store() -> None:
    settings = Settings()

    assert needs_redis(settings)
    assert redis_changes(settings, EMBEDDED) == {"redis_url": EMBEDDED, "broker_url": EMBEDDED}


def test_a_configured_redis_broker_also_serves_status_and_caches() -> None:
    settings = Settings.of(broker_url="redis://cache:6379/0")

    assert not needs_redis(settings)
    assert redis_changes(settings, None) == {}


def test_a_rabbitmq_broker_still_gets_an_embedded_redis_for_status_and_caches() -> None:
    settings = Settings.of(broker_url="amqp://guest:guest@127.0.0.1:5672//")

    assert needs_redis(settings)
    assert redis_changes(settings, EMBEDDED) == {"redis_url": EMBEDDED}


def test_a_configured_redis_without_a_broker_is_the_broker_too() -> None:
    settings = Settings.of(redis_url="redis://cache:6379/2")

    assert not needs_redis(settings)
    assert redis_changes(settings, None) == {"broker_url": "redis://cache:6379/2"}


def test_a_home_records_its_redis_port_and_reuses_it_while_free(tmp_path: Path) -> None:
    """Catches: a fixed port (the old 6399) or a new port at every start. Mutation tried:
    `recorded_port` returning a fresh `free_port()` without reading the record (the second
    plan gets another port and this test fails)."""
    # Given a home whose Redis was planned once
    first = plan_redis(tmp_path / "home" / "redis")
    assert (tmp_path / "home" / "redis" / "port").read_text().strip() == str(first.port)
    assert first.url == f"redis://127.0.0.1:{first.port}/0"
    assert first.argv[first.argv.index("--port") + 1] == str(first.port)

    # When the same home starts again with that port free, then it gets the same port
    assert plan_redis(tmp_path / "home" / "redis").port == first.port


def test_a_taken_recorded_port_is_replaced_and_the_new_one_recorded(tmp_path: Path) -> None:
    """Mutation tried: `recorded_port` keeping the recorded port whether or not something
    listens there (this test fails: the taken port comes back)."""
    record = tmp_path / "port"
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        record.write_text(f"{port}\n")

        again = recorded_port(record)

    assert again != port
    assert record.read_text().strip() == str(again)


def test_two_homes_on_one_host_run_two_redis_servers_on_two_ports(
    tmp_path: Path, cleanup: list
) -> None:
    """The attack of issue 16: a second home's Redis took the first one's fixed port.
    Mutation tried: `plan_redis` returning the old DEFAULT_REDIS_PORT (6399) for every home
    (the second plan's port equals the first's and this test fails)."""
    # Given home A's Redis running on its planned port
    a = plan_redis(tmp_path / "a" / "redis")
    cleanup.append(start_redis(a.data_dir, port=a.port))
    redis.Redis.from_url(a.url).set("whose", "a")

    # When home B plans its Redis while A's runs
    b = plan_redis(tmp_path / "b" / "redis")
    cleanup.append(start_redis(b.data_dir, port=b.port))

    # Then B has a port and a server of its own
    assert b.port != a.port
    assert redis.Redis.from_url(b.url).get("whose") is None
    assert redis.Redis.from_url(a.url).get("whose") == b"a"
