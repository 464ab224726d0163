"""``db.engine.one_statement``: a statement that commits itself, on a pooled connection that
goes back to the pool for transactions."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_engine, make_session_factory, one_statement
from inferq.core.settings import Settings


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
    """Catches: the statement left in a transaction the session's close would roll back."""
    with one_statement(sessions) as session:
        session.execute(text("INSERT INTO one_statement_probe VALUES (1)"))
        # (no commit called: the statement committed itself)
    with sessions() as session:
        assert session.scalar(text("SELECT count(*) FROM one_statement_probe")) == 1


def test_the_connection_goes_back_to_transactions(sessions: sessionmaker[Session]) -> None:
    """After a unit of one statement, and after one that failed, the same connection runs
    two statements as one transaction again: a rollback undoes both. Catches: the
    autocommit flag left on (tried: the ``finally`` removed: the rollback undid nothing)."""
    with one_statement(sessions) as session:
        session.execute(text("SELECT 1"))
    with pytest.raises(DBAPIError), one_statement(sessions) as session:
        session.execute(text("SELECT 1 / 0"))
    for _ in range(2):
        with sessions() as session:
            session.execute(text("INSERT INTO one_statement_probe VALUES (2)"))
            session.execute(text("INSERT INTO one_statement_probe VALUES (3)"))
            session.rollback()
        with sessions() as session:
            assert session.scalar(text("SELECT count(*) FROM one_statement_probe")) == 0
