"""The scheduler vacuums the partitions of ``jobs`` that autovacuum leaves alone
(scheduler/vacuum.py), once their dead rows pass the bar. In a database of its own; the
partition is taken out of autovacuum's hands on the table itself (``autovacuum_enabled =
false``), so the test holds on a server with autovacuum on and on one without."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from db.ids import new_id, time_of
from db.migrate import upgrade
from db.partitions import partitions
from scheduler.vacuum import vacuum_once
from tests.factories import bare_model
from tests.services import Services, create_database

JOBS = 300


@pytest.fixture
def db(services: Services) -> Iterator[Engine]:
    url, drop = create_database(services.postgres_url)
    upgrade(url)
    engine = create_engine(url)
    yield engine
    engine.dispose()
    drop()


def current_partition(db: Engine) -> str:
    with db.connect() as conn:
        now = conn.scalar(text("SELECT now()"))
        return next(p.name for p in partitions(conn) if p.lower <= now < p.upper)


def jobs_claimed_and_stored(db: Engine, count: int) -> None:
    """``count`` jobs written as a worker writes them: inserted, claimed, stored (two dead
    rows each)."""
    with db.begin() as conn:
        tenant, model, version = bare_model(conn)
        for _ in range(count):
            job_id = new_id()
            conn.execute(
                text(
                    "INSERT INTO jobs (id, created_at, tenant_id, model_id, version_id, lane,"
                    " status, input) VALUES (:id, :at, :t, :m, :v, 'online', 'queued',"
                    " CAST(:input AS jsonb))"
                ),
                {
                    "id": job_id,
                    "at": time_of(job_id),
                    "t": tenant,
                    "m": model,
                    "v": version,
                    "input": json.dumps({"pixels": [1] * 64}),
                },
            )
    for status in ("running", "succeeded"):
        with db.begin() as conn:
            conn.execute(text("UPDATE jobs SET status = :s"), {"s": status})
    db.dispose()  # a backend that exits reports its row counts at once


def dead_rows(db: Engine, name: str, at_least: int | None = None) -> int:
    """The partition's dead rows as Postgres counts them; with ``at_least``, once they
    reach it (counts arrive within a second or so), else at most."""
    deadline = time.monotonic() + 15
    while True:
        with db.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            dead = int(
                conn.scalar(
                    text("SELECT n_dead_tup FROM pg_stat_user_tables WHERE relname = :n"),
                    {"n": name},
                )
                or 0
            )
        settled = dead >= at_least if at_least is not None else dead == 0
        if settled or time.monotonic() > deadline:
            return dead
        time.sleep(0.2)


def out_of_autovacuums_hands(db: Engine, name: str) -> None:
    with db.begin() as conn:
        conn.execute(text(f"ALTER TABLE {name} SET (autovacuum_enabled = false)"))


def test_a_partition_autovacuum_leaves_alone_is_vacuumed_once_its_dead_rows_pass_the_bar(
    db: Engine,
) -> None:
    """Catches: dead rows left to pile up where autovacuum does not run (every read of open
    jobs walks them: 130 ms for the reconciler's after 130,000 jobs)."""
    name = current_partition(db)
    out_of_autovacuums_hands(db, name)
    jobs_claimed_and_stored(db, JOBS)
    assert dead_rows(db, name, at_least=2 * JOBS) >= 2 * JOBS
    # When the scheduler's pass runs with a bar below them
    assert vacuum_once(db, min_dead=JOBS) == [name]
    # Then the partition holds no dead rows, and its live ones are all there
    assert dead_rows(db, name) == 0
    with db.connect() as conn:
        assert conn.scalar(text(f"SELECT count(*) FROM {name}")) == JOBS


def test_below_the_bar_nothing_is_vacuumed(db: Engine) -> None:
    """Catches: a vacuum every pass whatever the partition holds."""
    name = current_partition(db)
    out_of_autovacuums_hands(db, name)
    jobs_claimed_and_stored(db, JOBS)
    assert dead_rows(db, name, at_least=2 * JOBS) >= 2 * JOBS
    assert vacuum_once(db, min_dead=10 * JOBS) == []
    assert dead_rows(db, name, at_least=2 * JOBS) >= 2 * JOBS
