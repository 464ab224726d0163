"""what hangs off a job, partitioned like jobs, so retention drops it whole too

``feedback``, ``webhooks``, ``webhook_deliveries`` and ``shadow_results`` become tables
partitioned by range of ``job_created_at``, with one partition for each partition of
``jobs`` and the same bounds (``feedback_p20261204`` beside ``jobs_p20261204``); their rows
are copied in. Retention then detaches and drops a span's partitions of all five tables
instead of deleting the dependents' rows one by one (db/partitions.py).

- Each primary key gains ``job_created_at`` (a unique key on a partitioned table must hold
  the partition key). This changes nothing: ``job_created_at`` is a function of ``job_id``.
- The trigger that filled ``job_created_at`` goes from these four: a BEFORE trigger cannot
  set the key that routes the row to its partition. Their writers give it (db/feedback.py,
  db/webhooks.py, db/experiments.py).
- Their foreign keys (to tenants, model versions and experiments) go, as they went from
  ``jobs`` in 0011: dropping a partition that has one locks the other table exclusively
  (every request reads ``tenants``). Nothing deletes those rows.
- Their indexes on ``job_created_at`` go: it is the partition key, and nothing deletes by it.
- Rows whose job no longer exists (none, unless a retention pass raced a write) are not
  copied: they would have no partition.

``idempotency_keys`` stays a plain table: an ``Idempotency-Key`` must be unique for its API
key over all time, and Postgres enforces a unique key on a partitioned table only within
each partition (it must hold the partition key). Keyed on ``(key_id, key, job_created_at)``,
a retry landing in a newer partition than its first try would make a second job. Its
records live ``INFERQ_IDEMPOTENCY_TTL_S`` (a day); retention deletes those expired or whose
job is gone (db/idempotency.py), a small table deleted row by row.

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-05 11:30:00
"""

from __future__ import annotations

import datetime as dt
from typing import NamedTuple

from alembic import op

from db.partitions import partition_name, partitions

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None


class Dependent(NamedTuple):
    """What a dependent table keeps: its key before and after, its indexes, its foreign keys."""

    key: tuple[str, ...]
    indexes: dict[str, str]
    foreign_keys: dict[str, str]
    sequence: str | None = None


DEPENDENTS = {
    "feedback": Dependent(
        ("id",),
        {"ix_feedback_job_id": "(job_id)"},
        {"feedback_tenant_id_fkey": "(tenant_id) REFERENCES tenants(id) ON DELETE CASCADE"},
    ),
    "webhooks": Dependent(("job_id",), {}, {}),
    "webhook_deliveries": Dependent(
        ("id",),
        {"ix_webhook_deliveries_job": "(job_id, id)"},
        {},
        sequence="webhook_deliveries_id_seq",
    ),
    "shadow_results": Dependent(
        ("job_id", "version_id"),
        {"ix_shadow_results_experiment_id": "(experiment_id)"},
        {
            "shadow_results_experiment_id_fkey": (
                "(experiment_id) REFERENCES experiments(id) ON DELETE CASCADE"
            ),
            "shadow_results_version_id_fkey": "(version_id) REFERENCES model_versions(id)",
        },
    ),
}


def upgrade() -> None:
    bind = op.get_bind()
    spans = [(p.lower, p.upper) for p in partitions(bind)]
    for table, dependent in DEPENDENTS.items():
        _partition(table, dependent, spans)


Span = tuple[dt.datetime, dt.datetime]


def _partition(table: str, dependent: Dependent, spans: list[Span]) -> None:
    old = f"{table}_unpartitioned"
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    for index in (f"{table}_pkey", f"ix_{table}_job_created_at", *dependent.indexes):
        op.execute(f"ALTER INDEX {index} RENAME TO {index}_old")
    op.execute(
        f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        " PARTITION BY RANGE (job_created_at)"
    )
    key = ", ".join(_with_partition_key(dependent.key))
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({key})")
    for index, definition in dependent.indexes.items():
        op.execute(f"CREATE INDEX {index} ON {table} {definition}")
    if dependent.sequence:  # it would go with the old table
        op.execute(f"ALTER SEQUENCE {dependent.sequence} OWNED BY {table}.id")
    for lower, upper in spans:
        op.execute(
            f"CREATE TABLE {partition_name(lower, table)} PARTITION OF {table}"
            f" FOR VALUES FROM ('{lower.isoformat()}') TO ('{upper.isoformat()}')"
        )
    op.execute(
        f"INSERT INTO {table} SELECT d.* FROM {old} d WHERE EXISTS"
        " (SELECT 1 FROM jobs j WHERE j.id = d.job_id AND j.created_at = d.job_created_at)"
    )
    op.execute(f"DROP TABLE {old}")


def _with_partition_key(key: tuple[str, ...]) -> tuple[str, ...]:
    """The key with ``job_created_at`` second (after the job or row id), as the models say."""
    return (key[0], "job_created_at", *key[1:])


def downgrade() -> None:
    """Back to plain tables (0011's): the rows are copied back, the trigger, the foreign keys
    (not validated) and the indexes on ``job_created_at`` return."""
    for table, dependent in DEPENDENTS.items():
        _unpartition(table, dependent)


def _unpartition(table: str, dependent: Dependent) -> None:
    old = f"{table}_partitioned"
    op.execute(f"ALTER TABLE {table} RENAME TO {old}")
    for index in (f"{table}_pkey", *dependent.indexes):
        op.execute(f"ALTER INDEX {index} RENAME TO {index}_old")
    op.execute(f"CREATE TABLE {table} (LIKE {old} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
    op.execute(f"INSERT INTO {table} SELECT * FROM {old}")
    key = ", ".join(dependent.key)
    op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {table}_pkey PRIMARY KEY ({key})")
    for index, definition in dependent.indexes.items():
        op.execute(f"CREATE INDEX {index} ON {table} {definition}")
    op.create_index(f"ix_{table}_job_created_at", table, ["job_created_at"])
    for name, definition in dependent.foreign_keys.items():
        # NOT VALID: rows written under 0012 may name what no longer exists; new ones are
        # checked as under 0011.
        op.execute(f"ALTER TABLE {table} ADD CONSTRAINT {name} FOREIGN KEY {definition} NOT VALID")
    if dependent.sequence:
        op.execute(f"ALTER SEQUENCE {dependent.sequence} OWNED BY {table}.id")
    op.execute(f"DROP TABLE {old}")  # with its partitions
    op.execute(
        f"CREATE TRIGGER {table}_job_created_at BEFORE INSERT OR UPDATE OF job_id ON {table}"
        " FOR EACH ROW EXECUTE FUNCTION fill_job_created_at()"
    )
