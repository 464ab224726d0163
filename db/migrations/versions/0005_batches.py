"""batches: many inputs submitted at once, each a job of the batch lane

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-28 16:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batches",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("tenant_id", sa.UUID(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("lane", sa.String(length=16), server_default="batch", nullable=False),
        sa.Column("status", sa.String(length=16), server_default="running", nullable=False),
        sa.Column("total", sa.Integer(), nullable=False),
        sa.Column("cached", sa.Integer(), server_default=sa.text("0"), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("canceled_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint("status IN ('running', 'completed', 'canceled')", name="batch_status"),
        sa.ForeignKeyConstraint(["tenant_id"], ["tenants.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"]),
        sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_batches_tenant_created", "batches", ["tenant_id", "created_at"])
    op.add_column("jobs", sa.Column("batch_id", sa.UUID(), nullable=True))
    op.add_column("jobs", sa.Column("batch_index", sa.Integer(), nullable=True))
    op.create_foreign_key(
        "fk_jobs_batch", "jobs", "batches", ["batch_id"], ["id"], ondelete="CASCADE"
    )
    op.create_index(
        "ix_jobs_batch_item",
        "jobs",
        ["batch_id", "batch_index"],
        unique=True,
        postgresql_where=sa.text("batch_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_jobs_batch_item", table_name="jobs", postgresql_where=sa.text("batch_id IS NOT NULL")
    )
    op.drop_constraint("fk_jobs_batch", "jobs", type_="foreignkey")
    op.drop_column("jobs", "batch_index")
    op.drop_column("jobs", "batch_id")
    op.drop_index("ix_batches_tenant_created", table_name="batches")
    op.drop_table("batches")
