"""Grouped reads of the jobs whose long-polls ran out of wait.

A long-poll whose wait ends without a completion signal reads what an open job changes (its
status, attempts, position) before it answers. Each such read on its own paid a session, a
pooled connection and a round trip, about a third of the API's CPU for every answer to a
held long-poll. Here those reads are handed to one thread per process, which lets each group
gather for :data:`GATHER_S` and reads the whole group in one statement (a job that several
requests wait for is read once). The read of a request whose wait ran out comes up to
``GATHER_S`` after that: its wait ends early enough to leave room for it
(api.services.jobs.ANSWER_MARGIN_S), and nothing its answer says is older than the read.
"""

from __future__ import annotations

import uuid

from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from api.services.grouping import GroupThread, NotTaken, Pending
from db.engine import retry_on_disconnect, statement_connection
from db.jobs import JobProgress, get_jobs_progress

#: How long the first read of a group waits for others to join it.
GATHER_S = 0.05

#: The most jobs one statement reads.
MAX_GROUP = 256

Key = tuple[uuid.UUID, uuid.UUID]  # the job's id, the asking tenant's id


class ProgressReader(GroupThread[Key]):
    """Reads the progress of open jobs for many requests at once."""

    thread_name = "inferq-progress"

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        queue_timeout_s: float,
        max_group: int = MAX_GROUP,
        gather_s: float = GATHER_S,
    ) -> None:
        super().__init__(max_group=max_group, gather_s=gather_s)
        self._sessions = sessions
        self._queue_timeout_s = queue_timeout_s

    def read(self, job_id: uuid.UUID, tenant_id: uuid.UUID) -> JobProgress | None:
        """The tenant's job's progress, or None when the tenant has no such job; raise what
        failed the group's read, or sqlalchemy's pool ``TimeoutError`` when no group took
        this read within ``queue_timeout_s`` (Postgres too slow to keep up: a 503)."""
        try:
            pending = self._hand_over((job_id, tenant_id), self._queue_timeout_s)
        except NotTaken:
            raise PoolTimeout(f"no read took this job within {self._queue_timeout_s:g} s") from None
        if pending.error is not None:
            raise pending.error
        if not pending.settled:
            raise RuntimeError("the progress reader stopped before the job's group ran")
        found: JobProgress | None = pending.result  # type: ignore[assignment]
        return found

    def _run_group(self, group: list[Pending[Key]]) -> None:
        def read() -> dict[uuid.UUID, tuple[uuid.UUID, JobProgress]]:
            with statement_connection(self._sessions) as conn:
                return get_jobs_progress(conn, (p.item[0] for p in group))

        found = retry_on_disconnect(read)
        for pending in group:
            job_id, tenant_id = pending.item
            owner, progress = found.get(job_id, (None, None))
            pending.result = progress if owner == tenant_id else None
