"""Batch repository: a batch row and its items, which are ordinary jobs of the batch lane.

Items go in with COPY, in chunks, inside the transaction that creates the batch: a batch is
visible whole or not at all. Progress is a count over the batch's jobs, results are read in
input order by keyset pages (short transactions: a slow download never holds a connection),
and canceling is one statement over the batch's queued jobs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import io
import uuid
from collections.abc import Iterable, Sequence
from typing import Any, cast

from psycopg2.extensions import get_wait_callback, set_wait_callback
from sqlalchemy import CursorResult, func, insert, select, text, update
from sqlalchemy.orm import Session

from db.ids import new_id, time_of
from db.tables import Batch, Job, Model, ModelVersion

#: The jobs columns an item is copied into; the others take their defaults.
_COPY = (
    "COPY jobs (id, created_at, tenant_id, model_id, version_id, lane, status, input, output,"
    " cached, published_at, started_at, completed_at, batch_id, batch_index) FROM STDIN"
)
_NULL = "\\N"


@dataclasses.dataclass(frozen=True)
class Item:
    """One input of a batch: its place in the input, its JSON text, and, when the result
    cache answered it at submit, the cached output's JSON text."""

    index: int
    input_json: str
    cached_json: str | None = None


def create_batch(
    session: Session,
    *,
    tenant_id: uuid.UUID,
    model_id: int,
    version_id: int,
    total: int,
    lane: str = "batch",
) -> Batch:
    """Insert a running batch; its items follow with :func:`copy_items` in this transaction."""
    values = {
        "id": new_id(),
        "tenant_id": tenant_id,
        "model_id": model_id,
        "version_id": version_id,
        "lane": lane,
        "total": total,
    }
    return session.scalars(insert(Batch).values(**values).returning(Batch)).one()


def _escape(json_text: str) -> str:
    # COPY's text format: backslash escapes, tab separates columns. JSON text has no raw
    # newline, but may hold tabs and carriage returns as whitespace between tokens.
    return json_text.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r")


def copy_items(session: Session, batch: Batch, items: Sequence[Item]) -> list[uuid.UUID]:
    """COPY ``items`` in as jobs of ``batch`` (cached ones already succeeded); returns the ids
    of the queued ones, in order, for the caller to publish after commit."""
    now = session.scalar(select(func.now()))
    assert now is not None
    stamp = now.isoformat()
    fixed = f"{batch.tenant_id}\t{batch.model_id}\t{batch.version_id}\t{batch.lane}"
    rows = io.StringIO()
    queued: list[uuid.UUID] = []
    for item in items:
        job_id = new_id()
        created = time_of(job_id)
        assert created is not None
        if item.cached_json is None:
            queued.append(job_id)
            state = f"queued\t{_escape(item.input_json)}\t{_NULL}\tf\t{stamp}\t{_NULL}\t{_NULL}"
        else:
            state = (
                f"succeeded\t{_escape(item.input_json)}\t{_escape(item.cached_json)}\tt"
                f"\t{_NULL}\t{stamp}\t{stamp}"
            )
        rows.write(f"{job_id}\t{created.isoformat()}\t{fixed}\t{state}\t{batch.id}\t{item.index}\n")
    rows.seek(0)
    cursor = session.connection().connection.cursor()
    # psycopg2 refuses COPY while a wait callback is set (psycogreen's, in a gevent API
    # process): this chunk's COPY runs blocking, and nothing else runs in between.
    wait_callback = get_wait_callback()
    set_wait_callback(None)
    try:
        cursor.copy_expert(_COPY, rows)
    finally:
        set_wait_callback(wait_callback)
        cursor.close()
    return queued


def set_cached_count(session: Session, batch_id: uuid.UUID, cached: int) -> None:
    """Record how many of the batch's items the result cache answered at submit."""
    session.execute(update(Batch).where(Batch.id == batch_id).values(cached=cached))


@dataclasses.dataclass(frozen=True)
class BatchView:
    """A batch with its model's name and version number."""

    batch: Batch
    model: str
    version: int


def get_batch_view(session: Session, batch_id: uuid.UUID, tenant_id: uuid.UUID) -> BatchView | None:
    """The tenant's batch, or None (another tenant's batch is indistinguishable from none)."""
    row = session.execute(
        select(Batch, Model.name, ModelVersion.version)
        .join(Model, Model.id == Batch.model_id)
        .join(ModelVersion, ModelVersion.id == Batch.version_id)
        .where(Batch.id == batch_id, Batch.tenant_id == tenant_id)
    ).one_or_none()
    return BatchView(*row) if row else None


@dataclasses.dataclass(frozen=True)
class Progress:
    """Counts of a batch's items by status, and what its throughput is made of."""

    counts: dict[str, int]
    #: Items run by a worker (not answered by the cache) that finished in the last ``window_s``.
    recent: int
    window_s: float
    first_started_at: dt.datetime | None
    last_completed_at: dt.datetime | None
    now: dt.datetime

    @property
    def open(self) -> int:
        """Items not finished yet (queued or running)."""
        return self.counts.get("queued", 0) + self.counts.get("running", 0)

    @property
    def throughput(self) -> float | None:
        """Items per second over the last ``window_s`` seconds (or since the first start)."""
        if self.first_started_at is None:
            return None
        span = min(self.window_s, (self.now - self.first_started_at).total_seconds())
        return self.recent / span if span > 0 else None


_PROGRESS = text(
    """
    SELECT status, count(*),
           count(*) FILTER (WHERE NOT cached AND completed_at > now() - make_interval(secs => :w)),
           min(started_at) FILTER (WHERE NOT cached),
           max(completed_at)
      FROM jobs WHERE batch_id = :batch_id GROUP BY status
    """
)


def progress(session: Session, batch_id: uuid.UUID, window_s: float = 60.0) -> Progress:
    """The batch's items counted by status (one statement over its index)."""
    rows = session.execute(_PROGRESS, {"batch_id": batch_id, "w": window_s}).all()
    now = session.scalar(select(func.now()))
    assert now is not None
    started = [r[3] for r in rows if r[3] is not None]
    completed = [r[4] for r in rows if r[4] is not None]
    return Progress(
        counts={r[0]: r[1] for r in rows},
        recent=sum(r[2] for r in rows),
        window_s=window_s,
        first_started_at=min(started, default=None),
        last_completed_at=max(completed, default=None),
        now=now,
    )


def mark_completed(session: Session, batch_id: uuid.UUID, completed_at: dt.datetime) -> None:
    """Record that every item of a running batch is finished (idempotent)."""
    session.execute(
        update(Batch)
        .where(Batch.id == batch_id, Batch.status == "running")
        .values(status="completed", completed_at=completed_at)
    )


def cancel_batch(session: Session, batch: Batch) -> tuple[int, int]:
    """Cancel a batch: its queued items never run, running ones are marked so their results
    are discarded. Returns ``(canceled, marked)``."""
    canceled = _count(
        session.execute(
            update(Job)
            .where(Job.batch_id == batch.id, Job.status == "queued")
            .values(status="canceled", completed_at=func.clock_timestamp())
        )
    )
    marked = _count(
        session.execute(
            update(Job)
            .where(Job.batch_id == batch.id, Job.status == "running")
            .values(cancel_requested=True)
        )
    )
    session.execute(
        update(Batch)
        .where(Batch.id == batch.id, Batch.status == "running")
        .values(status="canceled", canceled_at=func.clock_timestamp())
    )
    return canceled, marked


def _count(result: Any) -> int:
    # An UPDATE's result is a CursorResult, which knows how many rows it changed.
    return int(cast(CursorResult[Any], result).rowcount or 0)


@dataclasses.dataclass(frozen=True)
class ItemResult:
    """One item's outcome, as the results stream shows it."""

    index: int
    status: str
    output: dict[str, Any] | None
    error: dict[str, Any] | None


def results_page(session: Session, batch_id: uuid.UUID, after: int, limit: int) -> list[ItemResult]:
    """Up to ``limit`` items with an index above ``after``, in input order."""
    rows = session.execute(
        select(Job.batch_index, Job.status, Job.output, Job.error)
        .where(Job.batch_id == batch_id, Job.batch_index > after)
        .order_by(Job.batch_index)
        .limit(limit)
    )
    return [ItemResult(*row) for row in rows]


def queued_item_ids(session: Session, batch_id: uuid.UUID) -> Iterable[uuid.UUID]:
    """Ids of the batch's still-queued items, in input order (to publish them again)."""
    return session.scalars(
        select(Job.id)
        .where(Job.batch_id == batch_id, Job.status == "queued")
        .order_by(Job.batch_index)
    ).all()
