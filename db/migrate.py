"""Alembic, driven from Python: ``upgrade(url)`` is what ``inferq db upgrade`` runs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config

MIGRATIONS = Path(__file__).with_name("migrations")


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` pointing at inferq's migrations (no alembic.ini needed)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return config


#: ``sink(bytes, sha256) -> (uri, files)``: stores a legacy artifact held in Postgres in the
#: artifact store and says where it went (migration 0008 moves them; db knows no store).
ArtifactSink = Callable[[bytes, str], tuple[str, list[dict[str, Any]]]]


def upgrade(
    url: str,
    revision: str = "head",
    artifact_sink: ArtifactSink | None = None,
    job_partition_s: float | None = None,
) -> None:
    """Bring the database at ``url`` up to ``revision``. ``job_partition_s`` is the width of
    the partitions of ``jobs`` migration 0011 makes (a day when not given)."""
    config = alembic_config(url)
    config.attributes["artifact_sink"] = artifact_sink
    config.attributes["job_partition_s"] = job_partition_s
    command.upgrade(config, revision)


def downgrade(url: str, revision: str) -> None:
    """Take the database at ``url`` back to ``revision``."""
    command.downgrade(alembic_config(url), revision)
