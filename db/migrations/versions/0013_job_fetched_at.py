"""when a worker took a job's message from the broker

``jobs.fetched_at``: the time the worker that ran the job received its message, before
its batch formed and claimed it. With ``published_at``, ``started_at`` and
``completed_at`` it says where a job waited: in the broker (published → fetched), for its
batch (fetched → started) or in the model (started → completed). NULL for jobs run before
this revision, born finished from the result cache, or never fetched.

Adding a nullable column without a default changes no row: instant on a partitioned table
of any size.

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-06 03:40:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013"
down_revision = "0012"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("fetched_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "fetched_at")
