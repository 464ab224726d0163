"""``db.engine.statement_connection``: a statement that commits itself, on a pooled connection
that goes back to the pool for transactions."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Connection, text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory, statement_connection
from inferq.core.settings import Settings
from tests.factories import holdout
from tests.integration.conftest import Caller


@pytest.fixture
def sessions(settings: Settings) -> Iterator[sessionmaker[Session]]:
    # One connection: every session below gets the same one back from the pool.
    engine = make_engine(settings.require_database_url(), pool_size=1, max_overflow=0)
    with engine.begin() as conn:
        conn.execute(text("CREATE TEMP TABLE IF NOT EXISTS one_statement_probe (n int)"))
        conn.execute(text("DELETE FROM one_statement_probe"))
    yield make_session_factory(engine)
    engine.dispose()


def test_the_statement_is_committed_when_it_returns(sessions: sessionmaker[Session]) -> None:
    """Catches: the statement left in a transaction the connection's close would roll back."""
    with statement_connection(sessions) as conn:
        conn.execute(text("INSERT INTO one_statement_probe VALUES (1)"))
        # (no commit called: the statement committed itself)
    with sessions() as session:
        assert session.scalar(text("SELECT count(*) FROM one_statement_probe")) == 1


def test_the_connection_goes_back_to_transactions(sessions: sessionmaker[Session]) -> None:
    """After a unit of one statement, and after one that failed, the same connection runs
    two statements as one transaction again: a rollback undoes both. Catches: the
    autocommit flag left on (tried: the ``finally`` removed: the rollback undid nothing)."""
    with statement_connection(sessions) as conn:
        conn.execute(text("SELECT 1"))
    with pytest.raises(DBAPIError), statement_connection(sessions) as conn:
        conn.execute(text("SELECT 1 / 0"))
    for _ in range(2):
        with sessions() as session:
            session.execute(text("INSERT INTO one_statement_probe VALUES (2)"))
            session.execute(text("INSERT INTO one_statement_probe VALUES (3)"))
            session.rollback()
        with sessions() as session:
            assert session.scalar(text("SELECT count(*) FROM one_statement_probe")) == 0


def test_reading_a_job_is_one_round_trip(
    alice: Caller, monkeypatch: pytest.MonkeyPatch, no_worker: None
) -> None:
    """``GET /v1/jobs/{id}`` and a long-poll's read when its wait runs out: one statement,
    no BEGIN before it nor ROLLBACK after. Catches: either read in a transaction (tried:
    ``load`` with ``st.sessions()``: ``INTRANS``)."""
    import psycopg2.extensions as ext

    import api.services.jobs as jobs_service
    import api.services.progress as progress_service

    seen: list[tuple[str, int, bool]] = []

    def watch(name: str, real: Any) -> Any:
        def call(conn: Connection, *args: Any, **kwargs: Any) -> Any:
            out = real(conn, *args, **kwargs)
            dbapi = conn.connection.dbapi_connection
            assert dbapi is not None
            seen.append((name, dbapi.info.transaction_status, dbapi.autocommit))
            return out

        return call

    monkeypatch.setattr(jobs_service, "get_job_view", watch("job", jobs_service.get_job_view))
    monkeypatch.setattr(
        progress_service, "get_jobs_progress", watch("progress", progress_service.get_jobs_progress)
    )
    submitted = alice.post("/v1/jobs", {"model": "digits", "input": holdout(1)[0][0]})
    assert submitted.status_code == 202
    job_id = submitted.get_json()["id"]

    assert alice.get(f"/v1/jobs/{job_id}").status_code == 200
    assert alice.get(f"/v1/jobs/{job_id}?wait=0.2").status_code == 200  # no worker: runs out

    idle = ext.TRANSACTION_STATUS_IDLE
    assert {"job", "progress"} <= {name for name, _, _ in seen}
    assert all((status, auto) == (idle, True) for _, status, auto in seen), seen
