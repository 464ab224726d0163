"""jobs partitioned by creation time, for retention by dropping whole partitions

``jobs`` becomes a table partitioned by range of ``created_at`` (its primary key is now
``(id, created_at)``), with one partition per ``INFERQ_JOB_PARTITION`` (a day by default)
from its oldest job up to a few ahead of now. The tables that hang off a job (feedback,
webhooks and their deliveries, shadow results, idempotency keys) gain ``job_created_at``,
filled by a trigger, and name the job by ``(job_id, job_created_at)`` (no foreign key:
retention deletes them before it detaches a partition). New job ids are UUIDv7,
whose first 48 bits are the creation time in milliseconds: ``job_time(id)`` reads it back.

Revision ID: 0011
Revises: 0008
Create Date: 2026-12-04 19:00:00
"""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from alembic import context, op

from db.partitions import floor_time, partition_name

revision = "0011"
down_revision = "0008"
branch_labels = None
depends_on = None

#: The tables that hang off a job, each with the name of its foreign key to jobs.
DEPENDENTS = {
    "feedback": "feedback_job_id_fkey",
    "webhooks": "webhooks_job_id_fkey",
    "webhook_deliveries": "webhook_deliveries_job_id_fkey",
    "shadow_results": "shadow_results_job_id_fkey",
    "idempotency_keys": "idempotency_keys_job_id_fkey",
}

#: jobs' indexes (unique ones cannot be: they would need the partition key).
INDEXES = {
    "ix_jobs_batch_item": "(batch_id, batch_index) WHERE batch_id IS NOT NULL",
    "ix_jobs_completed_at": "(completed_at)",
    "ix_jobs_experiment": "(experiment_id, arm) WHERE experiment_id IS NOT NULL",
    "ix_jobs_open": "(lane, created_at) WHERE status IN ('queued', 'running')",
    "ix_jobs_tenant_created": "(tenant_id, created_at)",
    "ix_jobs_tenant_queued": "(tenant_id) WHERE status = 'queued'",
}
#: jobs keeps no foreign keys (nor do the tables that hang off it): dropping a partition
#: would lock every table on the other side exclusively, deadlocking with the key checks of
#: concurrent submits (db/tables.py, Job).

JOB_TIME = """
CREATE FUNCTION job_time(job_id uuid) RETURNS timestamptz
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $$
  SELECT CASE WHEN substr(job_id::text, 15, 1) = '7'
    THEN to_timestamp(('x' || lpad(substr(replace(job_id::text, '-', ''), 1, 12), 16, '0'))
                      ::bit(64)::bigint / 1000.0)
  END
$$
"""

FILL_JOB_CREATED_AT = """
CREATE FUNCTION fill_job_created_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
  IF TG_OP = 'UPDATE' AND NEW.job_id IS DISTINCT FROM OLD.job_id THEN
    NEW.job_created_at := NULL;  -- it points at another job now (ON CONFLICT DO UPDATE)
  END IF;
  IF NEW.job_created_at IS NULL THEN
    NEW.job_created_at := coalesce(
      job_time(NEW.job_id), (SELECT created_at FROM jobs WHERE id = NEW.job_id LIMIT 1));
  END IF;
  RETURN NEW;
END
$$
"""


def upgrade() -> None:
    width = dt.timedelta(seconds=float(context.config.attributes.get("job_partition_s") or 86_400))
    op.execute(JOB_TIME)
    op.execute(FILL_JOB_CREATED_AT)
    _partitioned_jobs(width)
    for table, constraint in DEPENDENTS.items():
        _hang_off_jobs(table, constraint)
    op.execute("DROP TABLE jobs_unpartitioned")
    op.create_table(
        "training_examples",
        sa.Column("id", sa.BigInteger(), sa.Identity(), primary_key=True),
        sa.Column(
            "model_id", sa.Integer(), sa.ForeignKey("models.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("job_created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("input", sa.dialects.postgresql.JSONB(), nullable=False),
        sa.Column("label", sa.dialects.postgresql.JSONB(), nullable=False),
        sa.Column(
            "kept_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.UniqueConstraint("job_id", name="uq_training_examples_job"),
    )
    op.create_index(
        "ix_training_examples_model", "training_examples", ["model_id", "job_created_at"]
    )
    op.create_table(
        "retention",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("horizon", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "updated_at", sa.DateTime(timezone=True), server_default=sa.func.now(), nullable=False
        ),
        sa.CheckConstraint("id = 1", name="retention_one_row"),
    )
    op.execute("INSERT INTO retention (id, horizon) VALUES (1, NULL)")


def _partitioned_jobs(width: dt.timedelta) -> None:
    op.execute("ALTER TABLE jobs RENAME TO jobs_unpartitioned")
    for index in INDEXES:
        op.execute(f"ALTER INDEX {index} RENAME TO {index}_old")
    op.execute("ALTER TABLE jobs_unpartitioned RENAME CONSTRAINT job_status TO job_status_old")
    op.execute(
        "CREATE TABLE jobs (LIKE jobs_unpartitioned INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        " PARTITION BY RANGE (created_at)"
    )
    op.execute("ALTER TABLE jobs RENAME CONSTRAINT job_status_old TO job_status")
    op.execute("ALTER TABLE jobs ADD PRIMARY KEY (id, created_at)")
    for index, definition in INDEXES.items():
        op.execute(f"CREATE INDEX {index} ON jobs {definition}")
    bind = op.get_bind()
    oldest = bind.scalar(sa.text("SELECT min(created_at) FROM jobs_unpartitioned"))
    now = bind.scalar(sa.text("SELECT now()"))
    start = floor_time(oldest or now, width)
    end = floor_time(now, width) + 4 * width  # today and three ahead
    while start < end:
        op.execute(
            f"CREATE TABLE {partition_name(start)} PARTITION OF jobs"
            f" FOR VALUES FROM ('{start.isoformat()}') TO ('{(start + width).isoformat()}')"
        )
        start += width
    op.execute("INSERT INTO jobs SELECT * FROM jobs_unpartitioned")


def _hang_off_jobs(table: str, constraint: str) -> None:
    op.add_column(table, sa.Column("job_created_at", sa.DateTime(timezone=True), nullable=True))
    op.execute(
        f"UPDATE {table} AS d SET job_created_at = j.created_at"
        f" FROM jobs_unpartitioned AS j WHERE j.id = d.job_id"
    )
    op.alter_column(table, "job_created_at", nullable=False)
    # No foreign key to the partitioned jobs: it would make every detach scan the partition
    # under an exclusive lock (db/partitions.py); retention deletes these rows itself.
    op.drop_constraint(constraint, table, type_="foreignkey")
    op.create_index(f"ix_{table}_job_created_at", table, ["job_created_at"])
    op.execute(
        f"CREATE TRIGGER {table}_job_created_at BEFORE INSERT OR UPDATE OF job_id ON {table}"
        " FOR EACH ROW EXECUTE FUNCTION fill_job_created_at()"
    )


def downgrade() -> None:
    raise NotImplementedError("jobs are partitioned from 0011 on; restore a backup to go back")
