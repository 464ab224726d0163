"""model artifacts move out of Postgres into the artifact store

Each version keeps its artifact's URI, kind (a file or a directory), digest, size and file
list; the bytes go to the store through the ``artifact_sink`` the caller hands Alembic
(``inferq db upgrade`` and ``inferq up`` pass the configured store's). A database with
versions to move and no sink stops here with a message, before changing anything.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 18:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import context, op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("model_versions", sa.Column("artifact_uri", sa.Text(), nullable=True))
    op.add_column(
        "model_versions",
        sa.Column("artifact_kind", sa.String(8), server_default="file", nullable=False),
    )
    op.add_column(
        "model_versions",
        sa.Column(
            "files",
            postgresql.JSONB(none_as_null=True, astext_type=sa.Text()),
            server_default=sa.text("'[]'::jsonb"),
            nullable=False,
        ),
    )
    op.add_column(
        "models",
        sa.Column("tensor_spec", postgresql.JSONB(none_as_null=True, astext_type=sa.Text())),
    )
    op.alter_column("models", "handler", type_=sa.String(255), existing_type=sa.String(64))
    _move_artifacts()
    op.drop_column("model_versions", "artifact")
    op.alter_column("model_versions", "artifact_uri", nullable=False)
    op.create_check_constraint(
        "model_version_artifact_kind", "model_versions", "artifact_kind IN ('file', 'dir')"
    )


def _move_artifacts() -> None:
    connection = op.get_bind()
    ids = [row[0] for row in connection.execute(sa.text("SELECT id FROM model_versions"))]
    if not ids:
        return
    sink = context.config.attributes.get("artifact_sink")
    if sink is None:
        raise RuntimeError(
            f"{len(ids)} model versions keep their weights in Postgres and must move to the "
            "artifact store: run `inferq db upgrade` (it knows INFERQ_ARTIFACT_STORE)"
        )
    for version_id in ids:  # one at a time: a version's bytes may be large
        data, sha256 = connection.execute(
            sa.text("SELECT artifact, sha256 FROM model_versions WHERE id = :id"),
            {"id": version_id},
        ).one()
        uri, files = sink(bytes(data), sha256)
        connection.execute(
            sa.text(
                "UPDATE model_versions SET artifact_uri = :uri, files = CAST(:files AS jsonb) "
                "WHERE id = :id"
            ),
            {"uri": uri, "files": _json(files), "id": version_id},
        )


def _json(value: object) -> str:
    import json

    return json.dumps(value)


def downgrade() -> None:
    raise NotImplementedError(
        "artifacts live in the artifact store now; restore a database backup to go back"
    )
