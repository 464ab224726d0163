"""Engines and sessions; nothing connects until a caller asks."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any, TypeVar

from psycopg2.extras import Json
from sqlalchemy import Connection, Engine, create_engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from db import fastjson

T = TypeVar("T")


def make_engine(
    url: str,
    *,
    pool_size: int = 5,
    max_overflow: int | None = None,
    application_name: str = "inferq",
    pre_ping: bool = True,
    pool_timeout_s: float = 30.0,
    json_serializer: Callable[[Any], str] | None = None,
) -> Engine:
    """An engine for ``url`` keeping ``pool_size`` connections, and opening up to
    ``max_overflow`` more under load (default: as many again).

    With ``pre_ping`` every checkout costs a round trip, and a restarted Postgres costs
    nothing; hot paths turn it off and retry once on a dropped connection instead
    (:func:`retry_on_disconnect`). A checkout that finds every connection taken waits up to
    ``pool_timeout_s``, then raises :class:`sqlalchemy.exc.TimeoutError`. JSON columns are
    written by ``json_serializer`` (default: the standard library's ``json.dumps``), and read
    by :func:`db.fastjson.loads` (``json.loads``'s values at orjson's speed: a worker's claim
    reads every job's input).
    """
    connect_args = {"application_name": application_name} if url.startswith("postgresql") else {}
    return create_engine(
        url,
        pool_size=pool_size,
        max_overflow=pool_size if max_overflow is None else max_overflow,
        pool_pre_ping=pre_ping,
        pool_recycle=1800,
        pool_timeout=pool_timeout_s,
        connect_args=connect_args,
        json_deserializer=fastjson.loads,
        **({"json_serializer": json_serializer} if json_serializer else {}),
    )


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    """Sessions that keep loaded values after commit (results are read after writing them)."""
    return sessionmaker(engine, expire_on_commit=False)


def retry_on_disconnect(operation: Callable[[], T]) -> T:
    """Run ``operation``; if it failed because the connection was dropped (the pool has
    then discarded it), run it once more on a fresh one."""
    try:
        return operation()
    except DBAPIError as exc:
        if not exc.connection_invalidated:
            raise
        return operation()


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One session, committed on success and rolled back on any error."""
    with factory() as session, session.begin():
        yield session


@contextmanager
def statement_connection(factory: sessionmaker[Session]) -> Iterator[Connection]:
    """A pooled connection for a unit of work that is one statement, which commits itself
    (the driver's autocommit): one round trip, not three (psycopg2 sends BEGIN before a
    transaction's first statement, and COMMIT is another). Two statements in it are two
    commits, never one transaction. The connection goes back to the pool as it came
    (switching the flag sends nothing; SQLAlchemy's ``isolation_level="AUTOCOMMIT"`` option
    costs a ``SET`` on return). No ORM session around it: building one and its transaction
    cost a third of a one-statement read's CPU (0.63 against 0.42 ms in-process for a job's
    view). The hottest statements skip even this: :class:`KeptConnection`."""
    engine = factory.kw["bind"]
    with engine.connect() as conn, _autocommitting(conn):
        yield conn


@contextmanager
def _autocommitting(conn: Connection) -> Iterator[None]:
    """The driver's autocommit on ``conn`` while the block runs, off again after it."""
    dbapi = conn.connection.dbapi_connection
    assert dbapi is not None
    dbapi.autocommit = True
    try:
        yield
    finally:
        if not dbapi.closed:  # a dropped connection is discarded, not reused
            dbapi.autocommit = False


class KeptConnection:
    """One pooled DBAPI connection per thread, kept checked out and in autocommit, for
    statements that are each a unit of work on a hot path: a worker's claim and store, the
    API's group INSERT.

    :func:`statement_connection` checks a connection out, wraps it in SQLAlchemy's
    ``Connection`` and builds a result around the cursor for every statement: 0.26-0.29 ms
    of CPU for a claim in a loop, against 0.09-0.10 ms on a cursor of a connection kept
    open. It is kept only while the pool has connections to spare: when a statement ends
    with every connection of the pool checked out, it goes back (others may be waiting), and
    the next statement checks one out again.

    Statements are the driver's (``%(name)s`` parameters); rows come back as the driver
    makes them (it is the engine's connection: the engine's type registrations apply). A
    failure is raised as SQLAlchemy's :class:`DBAPIError`, as the engine raises it; a
    dropped connection is discarded (``connection_invalidated``), so
    :func:`retry_on_disconnect` runs the statement once more on a fresh one.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = threading.local()

    def execute(self, statement: str, params: Mapping[str, Any]) -> list[tuple[Any, ...]]:
        """Run ``statement`` (it commits by itself) and return its rows."""
        fairy = self._connection()
        dbapi = fairy.dbapi_connection
        assert dbapi is not None
        try:
            with dbapi.cursor() as cursor:
                cursor.execute(statement, params)
                rows = list(cursor.fetchall()) if cursor.description else []
            if self._pool_full():
                self.close()  # others may be waiting for it: kept only while there are more
            return rows
        except self._engine.dialect.loaded_dbapi.Error as exc:
            dropped = self._engine.dialect.is_disconnect(exc, dbapi, None) or bool(dbapi.closed)
            if dropped:
                self._local.fairy = None
                fairy.invalidate(exc)
            raise DBAPIError.instance(
                statement,
                dict(params),
                exc,
                self._engine.dialect.loaded_dbapi.Error,
                connection_invalidated=dropped,
                dialect=self._engine.dialect,
            ) from exc

    def json(self, value: Any) -> Any:
        """``value`` as a parameter for a JSON column, written as the engine writes them."""
        dumps = getattr(self._engine.dialect, "_json_serializer", None) or json.dumps
        return Json(value, dumps=dumps)

    def close(self) -> None:
        """Give this thread's connection back to the pool, as it was (autocommit off)."""
        fairy = getattr(self._local, "fairy", None)
        self._local.fairy = None
        if fairy is None:
            return
        try:
            if fairy.dbapi_connection is not None and not fairy.dbapi_connection.closed:
                fairy.dbapi_connection.autocommit = False
        except Exception as exc:  # mid-statement (its thread was killed): not reusable
            fairy.invalidate(exc)
        fairy.close()

    def _pool_full(self) -> bool:
        """Whether every connection the pool keeps is checked out, this one included."""
        pool = self._engine.pool
        size, checkedout = getattr(pool, "size", None), getattr(pool, "checkedout", None)
        return size is not None and checkedout is not None and checkedout() >= size()

    def _connection(self) -> Any:
        fairy = getattr(self._local, "fairy", None)
        if getattr(self._local, "pid", None) != os.getpid():
            fairy = None  # a forked child's: the parent's connection is the parent's to use
            self._local.pid = os.getpid()
        if fairy is None:
            fairy = self._engine.raw_connection()
            assert fairy.dbapi_connection is not None
            fairy.dbapi_connection.autocommit = True
            self._local.fairy = fairy
        return fairy


@contextmanager
def short_session(url: str, application_name: str = "inferq-cli") -> Iterator[Session]:
    """A one-off session on its own single-connection engine, committed on success.

    For commands and launchers that touch the database once or twice and exit.
    """
    engine = make_engine(url, pool_size=1, application_name=application_name)
    try:
        with transaction(make_session_factory(engine)) as session:
            yield session
    finally:
        engine.dispose()
