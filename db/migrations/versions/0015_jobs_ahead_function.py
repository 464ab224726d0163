"""the count of the jobs queued ahead of a job, as a function whose plan Postgres keeps

A queued job's position is a count of the nearest jobs queued ahead of it in its lane,
made in the statement that reads the job (a GET, and a long-poll whose wait ran out).
Written into that statement, Postgres planned the count again on every read, across every
partition of ``jobs`` and each of their indexes: 0.8 ms of planning for 0.15 ms of work,
and most of a read's Postgres CPU. A PL/pgSQL function's statements are planned once per
connection and the plan reused (partitions pruned when it runs), and this works behind
PgBouncer's transaction pooling, where prepared statements named by the client do not.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 06:00:00
"""

from __future__ import annotations

from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

# The nearest p_cap queued jobs of the lane created before p_created_at, counted per model
# id as a JSON object ({} when none): counts adding up to p_cap mean "at least p_cap".
# STABLE: it reads, never writes, and sees the snapshot of the statement that calls it.
AHEAD = """
CREATE OR REPLACE FUNCTION inferq_jobs_ahead(
    p_lane text, p_created_at timestamptz, p_cap integer
) RETURNS json
LANGUAGE plpgsql STABLE PARALLEL SAFE AS $$
BEGIN
    RETURN (
        SELECT coalesce(json_object_agg(model_id, n), '{}'::json)
          FROM (SELECT model_id, count(*) AS n
                  FROM (SELECT model_id
                          FROM jobs
                         WHERE status = 'queued' AND lane = p_lane
                           AND created_at < p_created_at
                         ORDER BY created_at DESC
                         LIMIT p_cap) AS nearest
                 GROUP BY model_id) AS per_model
    );
END
$$
"""


def upgrade() -> None:
    op.execute(AHEAD)


def downgrade() -> None:
    op.execute("DROP FUNCTION inferq_jobs_ahead(text, timestamptz, integer)")
