"""experiments, shadow results and the activation history

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28 14:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def _jsonb() -> postgresql.JSONB:
    return postgresql.JSONB(none_as_null=True, astext_type=sa.Text())


def _created_at(name: str = "created_at") -> sa.Column:
    return sa.Column(
        name, sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
    )


def upgrade() -> None:
    op.create_table(
        "experiments",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=True),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("arms", _jsonb(), nullable=False),
        sa.Column("policy", _jsonb(), nullable=False),
        sa.Column("status", sa.String(length=16), server_default="running", nullable=False),
        sa.Column("created_by", sa.String(length=128), nullable=False),
        _created_at(),
        sa.Column("decided_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("decided_by", sa.String(length=128), nullable=True),
        sa.Column("decision", sa.String(length=32), nullable=True),
        sa.Column("winner", sa.String(length=32), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.CheckConstraint("mode IN ('ab', 'shadow')", name="experiment_mode"),
        sa.CheckConstraint(
            "status IN ('running', 'concluded', 'stopped')", name="experiment_status"
        ),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(
        "ix_experiments_one_running",
        "experiments",
        ["model_id"],
        unique=True,
        postgresql_where=sa.text("status = 'running'"),
    )
    op.create_table(
        "model_activations",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("previous_version_id", sa.Integer(), nullable=True),
        sa.Column("activated_by", sa.String(length=128), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        _created_at("activated_at"),
        sa.Column("rolled_back_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("rolled_back_by", sa.String(length=128), nullable=True),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(
            ["previous_version_id"], ["model_versions.id"], ondelete="SET NULL"
        ),
        sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_model_activations_model", "model_activations", ["model_id", "id"])
    # History starts with what is active now, so a first rollback has a known starting point.
    op.execute(
        """
        INSERT INTO model_activations (model_id, version_id, activated_by, reason)
        SELECT id, active_version_id, 'migration 0003', 'active when history began'
          FROM models WHERE active_version_id IS NOT NULL
        """
    )
    op.create_table(
        "shadow_results",
        sa.Column("job_id", sa.UUID(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.UUID(), nullable=False),
        sa.Column("arm", sa.String(length=32), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("output", _jsonb(), nullable=True),
        sa.Column("error", _jsonb(), nullable=True),
        sa.Column("predict_ms", sa.Float(), nullable=True),
        sa.Column("worker", sa.String(length=256), nullable=True),
        _created_at(),
        sa.CheckConstraint("status IN ('succeeded', 'failed')", name="shadow_result_status"),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("job_id", "version_id"),
    )
    op.create_index(op.f("ix_shadow_results_experiment_id"), "shadow_results", ["experiment_id"])
    op.add_column("jobs", sa.Column("experiment_id", sa.UUID(), nullable=True))
    op.add_column("jobs", sa.Column("arm", sa.String(length=32), nullable=True))
    op.create_foreign_key("fk_jobs_experiment", "jobs", "experiments", ["experiment_id"], ["id"])
    op.create_index(
        "ix_jobs_experiment",
        "jobs",
        ["experiment_id", "arm"],
        postgresql_where=sa.text("experiment_id IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_jobs_experiment",
        table_name="jobs",
        postgresql_where=sa.text("experiment_id IS NOT NULL"),
    )
    op.drop_constraint("fk_jobs_experiment", "jobs", type_="foreignkey")
    op.drop_column("jobs", "arm")
    op.drop_column("jobs", "experiment_id")
    op.drop_index(op.f("ix_shadow_results_experiment_id"), table_name="shadow_results")
    op.drop_table("shadow_results")
    op.drop_index("ix_model_activations_model", table_name="model_activations")
    op.drop_table("model_activations")
    op.drop_index(
        "ix_experiments_one_running",
        table_name="experiments",
        postgresql_where=sa.text("status = 'running'"),
    )
    op.drop_table("experiments")
