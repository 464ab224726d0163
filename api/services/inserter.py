"""Group commit for submits: the jobs an API process accepts together go into Postgres in one
multi-row INSERT and one commit.

One insert and one commit per job was the largest share of an API process's CPU under load,
and each commit is a WAL flush for Postgres. Here the plain submits (no idempotency key, no
webhook, no ``Cancel-After``, no cached result: nothing else in their transaction) hand their
row to one thread per process, which inserts every row handed over while its previous commit
was in flight (api.services.grouping). A request returns only once its row is committed, so a
202 still means the job is durable.

The INSERT is one statement that commits itself (the driver's autocommit): one round trip,
where BEGIN, INSERT and COMMIT were three. A statement goes in whole or not at all, so:

- What one row can break stays with that row: when the group's INSERT is refused for a value
  (a constraint, a type), each row is tried again on its own, and only the bad one fails.
- A statement Postgres refused or cancelled changed nothing: every request of the group
  fails with a 503 that says so.
- A connection lost with the INSERT in flight leaves it committed or not, and the request
  cannot tell which from the error. The ids are this process's own, fresh ones, so it looks
  them up on a fresh connection and inserts them only if they are missing: either way each
  request gets its 202 and each job exists once. Only when that fails as well (Postgres still
  gone) is the outcome unknown, and the 503 says the job may exist.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.exc import DataError, DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from api.services.grouping import GroupThread, NotTaken, Pending
from db.engine import KeptConnection, statement_connection
from db.jobs import find_inserted, insert_queued_jobs
from db.tables import Job
from inferq.core.errors import ServiceUnavailable

Row = dict[str, Any]

#: The most rows one transaction takes: one statement of a few hundred kilobytes at most
#: (an input is capped by the body limit), and more concurrent submits than a process has
#: at the pool's size.
MAX_GROUP = 64


class GroupInserter(GroupThread[Row]):
    """Inserts queued jobs handed over by many threads, as few transactions as the load allows."""

    thread_name = "inferq-inserter"

    def __init__(
        self, sessions: sessionmaker[Session], *, max_group: int, queue_timeout_s: float
    ) -> None:
        # Once its group is taken, a request waits as long as the insert does (the pool's
        # wait, the server's): one that gave up then could not say whether its job exists.
        # Before that it waits ``queue_timeout_s`` at most, as for a pooled connection.
        super().__init__(max_group=max_group)
        self._sessions = sessions
        self._queue_timeout_s = queue_timeout_s
        # The group's INSERT runs on a connection its thread keeps, in autocommit: a pool
        # checkout and SQLAlchemy's Connection and result around each cost 0.46 against 0.19
        # ms of CPU an insert in a loop. Given back when the thread ends (idle).
        self._kept = KeptConnection(sessions.kw["bind"])

    def insert(self, row: Row) -> Job:
        """Return the job once ``row`` (db.jobs.queued_job_values) is committed; raise what
        failed its insert or its group's transaction, or sqlalchemy's pool ``TimeoutError``
        when no group took it within ``queue_timeout_s`` (it was never inserted)."""
        try:
            pending = self._hand_over(row, self._queue_timeout_s)
        except NotTaken:
            # Postgres is too slow to keep up: answered as a pool that had no connection
            # free in time (503), and the job certainly does not exist.
            raise PoolTimeout(
                f"no insert took this job within {self._queue_timeout_s:g} s"
            ) from None
        if pending.error is not None:
            raise pending.error
        if not pending.settled:
            raise RuntimeError("the inserter stopped before the job's group ran")
        job: Job = pending.result  # type: ignore[assignment]
        return job

    def _run_group(self, group: list[Pending[Row]]) -> None:
        try:
            jobs = self._commit([pending.item for pending in group])
        except (DataError, IntegrityError):
            if len(group) == 1:
                raise
            for pending in group:  # find the bad row: the others still go in
                try:
                    pending.result = self._commit([pending.item])[0]
                except Exception as exc:
                    pending.error = exc
            return
        for pending, job in zip(group, jobs, strict=True):
            pending.result = job

    def _thread_ended(self) -> None:
        self._kept.close()

    def _commit(self, rows: list[Row]) -> list[Job]:
        try:
            return insert_queued_jobs(self._kept, rows)
        except DBAPIError as exc:
            if not exc.connection_invalidated:
                raise  # refused or cancelled by Postgres, or never sent: nothing changed
        return self._settle_lost(rows)

    def _settle_lost(self, rows: list[Row]) -> list[Job]:
        """``rows`` after a connection lost with their INSERT in flight: the jobs that INSERT
        committed, the rest inserted now (it went in whole or not at all, so all or none)."""
        try:
            with statement_connection(self._sessions) as conn:
                found = find_inserted(conn, rows)
                missing = [row for row in rows if row["id"] not in found]
                if missing:
                    found |= {job.id: job for job in insert_queued_jobs(conn, missing)}
        except (OperationalError, InterfaceError) as exc:
            raise ServiceUnavailable(
                "The connection to the database was lost while this job was being stored, "
                "and the database could not be reached since to check: the job may exist. "
                "Retry shortly; to be sure of one job across retries, send an Idempotency-Key.",
                headers={"Retry-After": "2"},
            ) from exc
        return [found[row["id"]] for row in rows]
