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
    """Migrate the database to REVISION."""
    from db.migrate import upgrade as run_upgrade

    run_upgrade(load_settings().require_database_url(), revision)
    info(f"database at {revision}")


COMMANDS = [db]
