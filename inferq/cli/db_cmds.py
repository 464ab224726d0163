"""``inferq db``: schema migrations."""

from __future__ import annotations

import click

from inferq.cli.common import info, load_settings, reports_errors


@click.group()
def db() -> None:
    """Database schema."""


@db.command()
@click.option("--revision", default="head", show_default=True)
@reports_errors
def upgrade(revision: str) -> None:
    """Migrate the database to REVISION (moving artifacts kept in Postgres by older versions
    into the artifact store, INFERQ_ARTIFACT_STORE)."""
    from db.migrate import upgrade as run_upgrade
    from inferq.core.artifacts import open_store
    from inferq.domain.registration import legacy_sink

    settings = load_settings()
    sink = legacy_sink(open_store(settings))
    run_upgrade(
        settings.require_database_url(),
        revision,
        artifact_sink=sink,
        job_partition_s=settings.scheduler.job_partition_s,
    )
    info(f"database at {revision}")


COMMANDS = [db]
