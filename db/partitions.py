"""The partitions of ``jobs`` and of what hangs off it, and what retention does to them:
every statement in one place.

A partition of ``jobs`` covers ``[lower, upper)`` of ``created_at``; the tables that hang
off a job (``DEPENDENTS``) are partitioned on ``job_created_at`` with the same bounds
(migration 0012), each partition named like its twin (``feedback_p20261204``). Retention
of a span: the labelled jobs it holds are kept as training examples; then the partition of
``jobs`` is detached, then each dependent's (an exclusive lock for milliseconds each,
bounded by ``lock_timeout``: a busy table makes it wait for the next pass, never for long),
and all are dropped. No row of theirs is deleted one by one.

The dependents name a job by ``(job_id, job_created_at)`` without a foreign key: a foreign
key to a partitioned table makes every detach scan the partition under that exclusive lock,
and one from a partition to another table makes its drop lock that table exclusively.
Every write of a dependent row happens in a transaction that reads the job (or its webhook)
first, so a detach of ``jobs`` waits for it, and a write after that detach finds no job and
writes nothing: no write ever lands in a dependent's partition that is going away.

``idempotency_keys`` is not partitioned: an ``Idempotency-Key`` must be unique over all
time, and a unique key on a partitioned table must hold the partition key. Its records
live a day (``INFERQ_IDEMPOTENCY_TTL_S``); retention deletes those expired or whose job is
gone (``db.idempotency.purge``).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import re

from sqlalchemy import Connection, text
from sqlalchemy.orm import Session

EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)
#: The tables that hang off a job, partitioned by ``job_created_at`` like ``jobs``
#: (migration 0012), in the order retention detaches them (a webhook before its deliveries:
#: a delivery is written only while its webhook is there).
DEPENDENTS = ("feedback", "webhooks", "webhook_deliveries", "shadow_results")
#: Each partitioned table's partition key.
KEYS = {"jobs": "created_at", **{table: "job_created_at" for table in DEPENDENTS}}
_BOUND = re.compile(r"FROM \('([^']+)'\) TO \('([^']+)'\)")
#: Two schedulers never enforce retention at once (a transaction-level lock: it works
#: through PgBouncer's transaction pooling).
RETENTION_LOCK = 7_311_224_002


@dataclasses.dataclass(frozen=True)
class Partition:
    """One partition of ``jobs`` (or of a dependent)."""

    name: str
    lower: dt.datetime
    upper: dt.datetime


def partitions(session: Session | Connection, table: str = "jobs") -> list[Partition]:
    """Every partition of ``table`` (``jobs`` or one of ``DEPENDENTS``), oldest first."""
    rows = session.execute(
        text(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid WHERE i.inhparent = CAST(:t AS regclass)"
        ),
        {"t": table},
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


def partition_name(lower: dt.datetime, table: str = "jobs") -> str:
    """``jobs_p20261204`` for a day, ``jobs_p20261204t153000`` for a partition within one
    (``feedback_p20261204`` for the twin in ``feedback``)."""
    lower = lower.astimezone(dt.timezone.utc)
    day = lower.strftime("%Y%m%d")
    return f"{table}_p{day}" if lower.time() == dt.time(0) else f"{table}_p{day}t{lower:%H%M%S}"


def create_partition(
    session: Session,
    lower: dt.datetime,
    upper: dt.datetime,
    lock_timeout_ms: int = 500,
    table: str = "jobs",
) -> str:
    """Make the partition ``[lower, upper)`` of ``table``; returns its name. Made as a table
    of its own, then attached: attaching takes a lock that lets reads and writes of the table
    go on (``CREATE TABLE … PARTITION OF`` would block them), and the bound's CHECK spares
    the scan."""
    name, key = partition_name(lower, table), KEYS[table]
    bound = f"FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
    session.execute(
        text(f"CREATE TABLE {name} (LIKE {table} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    )
    session.execute(
        text(
            f"ALTER TABLE {name} ADD CONSTRAINT {name}_bound CHECK ({key} IS NOT NULL"
            f" AND {key} >= '{lower.isoformat()}' AND {key} < '{upper.isoformat()}')"
        )
    )
    session.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
    session.execute(text(f"ALTER TABLE {table} ATTACH PARTITION {name} FOR VALUES {bound}"))
    session.execute(text(f"ALTER TABLE {name} DROP CONSTRAINT {name}_bound"))
    return name


def ensure_ahead(session: Session, width: dt.timedelta, ahead: int, now: dt.datetime) -> list[str]:
    """Make partitions so that jobs created from now until ``ahead`` widths on have one, in
    ``jobs`` and in each dependent; returns the names made. Starts after the newest partition
    (gaps stay gaps)."""
    existing = partitions(session)
    start = existing[-1].upper if existing else floor_time(now, width)
    start = max(start, floor_time(now, width))
    made = []
    while start < now + ahead * width:
        made.append(create_partition(session, start, start + width))
        start += width
    return made + mirror(session)


def mirror(session: Session) -> list[str]:
    """Give each dependent a partition for every partition of ``jobs`` it lacks (same
    bounds); returns the names made."""
    made = []
    spans = [(p.lower, p.upper) for p in partitions(session)]
    for table in DEPENDENTS:
        have = {(p.lower, p.upper) for p in partitions(session, table)}
        for lower, upper in spans:
            if (lower, upper) not in have:
                made.append(create_partition(session, lower, upper, table=table))
    return made


def expired_spans(session: Session, limit: dt.datetime) -> list[tuple[dt.datetime, dt.datetime]]:
    """The bounds of every partition, of ``jobs`` or of a dependent, wholly before ``limit``
    (a dependent's may outlive its twin in ``jobs`` by a pass), oldest first."""
    spans = {
        (p.lower, p.upper) for table in KEYS for p in partitions(session, table) if p.upper <= limit
    }
    return sorted(spans)


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


def detach(
    session: Session, part: Partition, lock_timeout_ms: int = 500, table: str = "jobs"
) -> None:
    """Detach the partition from ``table`` (raises when the lock is not had in time: less
    than Postgres's deadlock_timeout, so a writer queued behind it waits under a second)."""
    session.execute(text(f"SET LOCAL lock_timeout = {int(lock_timeout_ms)}"))
    session.execute(text(f"ALTER TABLE {table} DETACH PARTITION {part.name}"))


def drop_table(session: Session, name: str) -> None:
    """Drop a detached partition (it has no foreign key: dropping it locks nothing else)."""
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


@dataclasses.dataclass(frozen=True)
class Bloat:
    """A partition's rows as Postgres counts them (``pg_stat_user_tables``)."""

    name: str
    live: int
    dead: int


def unvacuumed(session: Session | Connection, table: str = "jobs") -> list[Bloat]:
    """The partitions of ``table`` that autovacuum leaves alone: all of them where it is off
    on the server, else those with ``autovacuum_enabled = false``; with their row counts."""
    rows = session.execute(
        text(
            "SELECT c.relname, coalesce(s.n_live_tup, 0), coalesce(s.n_dead_tup, 0)"
            " FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid"
            " LEFT JOIN pg_stat_user_tables s ON s.relid = c.oid"
            " WHERE i.inhparent = CAST(:t AS regclass)"
            " AND (current_setting('autovacuum') = 'off'"
            "      OR 'autovacuum_enabled=false' = ANY(coalesce(c.reloptions, '{}')))"
        ),
        {"t": table},
    )
    return [Bloat(name, int(live), int(dead)) for name, live, dead in rows]


def vacuum(autocommit: Connection, name: str) -> None:
    """``VACUUM (ANALYZE)`` the partition ``name``, on a connection in autocommit (VACUUM
    cannot run in a transaction)."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
        raise ValueError(f"not a partition's name: {name!r}")
    autocommit.execute(text(f"VACUUM (ANALYZE) {name}"))
