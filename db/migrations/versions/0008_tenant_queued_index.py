"""index for the tenant queued-job quota

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-28 13:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index(
        "ix_jobs_tenant_queued",
        "jobs",
        ["tenant_id"],
        unique=False,
        postgresql_where=sa.text("status = 'queued'"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_tenant_queued", table_name="jobs")
