"""The partitions of ``jobs``, and what retention does to them: every statement in one place.

A partition covers ``[lower, upper)`` of ``created_at``. Retention of a partition: the
labelled jobs it holds are kept as training examples and the rows that hang off its jobs
are deleted (plain DML, no table lock); then it is detached from ``jobs`` (an exclusive lock
for milliseconds, bounded by ``lock_timeout``: a busy table makes it wait for the next pass,
never for long) and dropped, which no query of ``jobs`` can see any more.

The tables that hang off a job name it by ``(job_id, job_created_at)`` without a foreign
key: a foreign key to a partitioned table makes every detach scan the partition under that
exclusive lock, and every new partition lock the referencing tables. The API writes them
in the transaction that reads the job; retention deletes them by ``job_created_at``.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

from sqlalchemy import text
from sqlalchemy.orm import Session

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
#: The tables that hang off a job (migration 0011), by ``job_created_at``.
DEPENDENTS = ("feedback", "webhooks", "webhook_deliveries", "shadow_results", "idempotency_keys")
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")
#: Two schedulers never enforce retention at once (a transaction-level lock: it works
#: through PgBouncer's transaction pooling).
RETENTION_LOCK = 7_311_224_002


@dataclasses.dataclass(frozen=True)
class Partition:
    """One partition of ``jobs``."""

    name: str
    lower: dt.datetime
    upper: dt.datetime


def partitions(session: Session) -> list[Partition]:
    """Every partition of ``jobs``, oldest first."""
    rows = session.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = 'jobs'::regclass"
        )
    )
    found = []
    for name, bound in rows:
        match = _BOUND.search(bound or "")
        if match:
            lower, upper = (dt.datetime.fromisoformat(v) for v in match.groups())
            found.append(Partition(name, lower, upper))
    return sorted(found, key=lambda p: p.lower)


def floor_time(moment: dt.datetime, width: dt.timedelta) -> dt.datetime:
    """The start of the partition of ``width`` that holds ``moment``."""
    return EPOCH + ((moment.astimezone(dt.timezone.utc) - EPOCH) // width) * width


def partition_name(lower: dt.datetime) -> str:
    """``jobs_p20261204`` for a day, ``jobs_p20261204t153000`` for a partition within one."""
    lower = lower.astimezone(dt.timezone.utc)
    day = lower.strftime("%Y%m%d")
    return f"jobs_p{day}" if lower.time() == dt.time(0) else f"jobs_p{day}t{lower:%H%M%S}"


def create_partition(
    session: Session, lower: dt.datetime, upper: dt.datetime, lock_timeout_ms: int = 500
) -> str:
    """Make the partition ``[lower, upper)``; returns its name. Made as a table of its own,
    then attached: attaching takes a lock that lets reads and writes of ``jobs`` go on
    (``CREATE TABLE … PARTITION OF`` would block them), and the bound's CHECK spares the scan."""
    name = partition_name(lower)
    bound = f"FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
    session.execute(
        text(f"CREATE TABLE {name} (LIKE jobs INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    )
    session.execute(
        text(
            f"ALTER TABLE {name} ADD CONSTRAINT {name}_bound CHECK (created_at IS NOT NULL"
            f" AND created_at >= '{lower.isoformat()}' AND created_at < '{upper.isoformat()}')"
        )
    )
    session.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
    session.execute(text(f"ALTER TABLE jobs ATTACH PARTITION {name} FOR VALUES {bound}"))
    session.execute(text(f"ALTER TABLE {name} DROP CONSTRAINT {name}_bound"))
    return name


def ensure_ahead(session: Session, width: dt.timedelta, ahead: int, now: dt.datetime) -> list[str]:
    """Make partitions so that jobs created from now until ``ahead`` widths on have one;
    returns the names made. Starts after the newest partition (gaps stay gaps)."""
    existing = partitions(session)
    start = existing[-1].upper if existing else floor_time(now, width)
    start = max(start, floor_time(now, width))
    made = []
    while start < now + ahead * width:
        made.append(create_partition(session, start, start + width))
        start += width
    return made


def keep_training_examples(session: Session, part: Partition) -> int:
    """Copy the partition's succeeded jobs whose latest feedback carries a label into
    ``training_examples``; returns how many were kept."""
    result = session.execute(
        text(
            """
            INSERT INTO training_examples
                   (model_id, version_id, job_id, job_created_at, input, label)
            SELECT j.model_id, j.version_id, j.id, j.created_at, j.input, f.label
              FROM jobs j
              JOIN LATERAL (SELECT label FROM feedback
                             WHERE feedback.job_id = j.id
                               AND feedback.job_created_at = j.created_at
                             ORDER BY created_at DESC LIMIT 1) f ON true
             WHERE j.created_at >= :lower AND j.created_at < :upper
               AND j.status = 'succeeded' AND f.label IS NOT NULL
                   AND f.label <> 'null'::jsonb
            ON CONFLICT (job_id) DO NOTHING
            """
        ),
        {"lower": part.lower, "upper": part.upper},
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def trim_training_examples(session: Session, keep: int) -> int:
    """Delete each model's training examples beyond its newest ``keep`` (retraining never
    reads further back); returns how many went."""
    result = session.execute(
        text(
            """
            DELETE FROM training_examples t USING (
              SELECT id FROM (
                SELECT id, row_number() OVER (PARTITION BY model_id
                                              ORDER BY job_created_at DESC) AS n
                  FROM training_examples) ranked
               WHERE n > :keep) old
             WHERE t.id = old.id
            """
        ),
        {"keep": keep},
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def delete_dependents(session: Session, before: dt.datetime) -> int:
    """Delete what hangs off jobs created before ``before``; returns the rows deleted."""
    deleted = 0
    for table in DEPENDENTS:
        result = session.execute(
            text(f"DELETE FROM {table} WHERE job_created_at < :before"), {"before": before}
        )
        deleted += int(result.rowcount or 0)  # type: ignore[attr-defined]
    return deleted


def detach(session: Session, part: Partition, lock_timeout_ms: int = 500) -> None:
    """Detach the partition from ``jobs`` (raises when the lock is not had in time: less
    than Postgres's deadlock_timeout, so a writer queued behind it waits under a second)."""
    session.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
    session.execute(text(f"ALTER TABLE jobs DETACH PARTITION {part.name}"))


def drop_table(session: Session, name: str) -> None:
    """Drop a detached partition."""
    session.execute(text(f"DROP TABLE IF EXISTS {name}"))


def lock_retention(session: Session) -> bool:
    """Take the retention lock for this transaction; False when another holds it."""
    return bool(session.scalar(text("SELECT pg_try_advisory_xact_lock(:k)"), {"k": RETENTION_LOCK}))


def batch_hold(session: Session, cutoff: dt.datetime) -> dt.datetime | None:
    """The creation time of the oldest batch not yet expired (running, or completed after
    ``cutoff``): its items must stay readable, so no partition from then on goes."""
    value = session.scalar(
        text(
            "SELECT min(created_at) FROM batches"
            " WHERE completed_at IS NULL OR completed_at >= :cutoff"
        ),
        {"cutoff": cutoff},
    )
    return value


def delete_expired_batches(session: Session, before: dt.datetime, cutoff: dt.datetime) -> int:
    """Delete batches created before ``before`` (their items are gone) that completed
    before ``cutoff``; returns how many."""
    result = session.execute(
        text("DELETE FROM batches WHERE created_at < :before AND completed_at < :cutoff"),
        {"before": before, "cutoff": cutoff},
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def horizon(session: Session) -> dt.datetime | None:
    """The oldest creation time ``jobs`` still holds; None while nothing has expired."""
    return session.scalar(text("SELECT horizon FROM retention WHERE id = 1"))


def set_horizon(session: Session, value: dt.datetime) -> None:
    """Record that jobs created before ``value`` have expired."""
    session.execute(
        text(
            "UPDATE retention SET horizon = greatest(horizon, :v), updated_at = now() WHERE id = 1"
        ),
        {"v": value},
    )
