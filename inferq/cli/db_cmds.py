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
    # Straight to Postgres: behind PgBouncer, database_url may pool transactions.
    run_upgrade(
        settings.require_direct_database_url(),
        revision,
        artifact_sink=sink,
        job_partition_s=settings.scheduler.job_partition_s,
    )
    info(f"database at {revision}")


@db.command()
@click.option(
    "--api-nodes", type=click.IntRange(min=0), default=None, help="Default: INFERQ_API_NODES."
)
@click.option(
    "--workers",
    type=click.IntRange(min=0),
    default=None,
    help="Online-lane workers (at most, when autoscaled); default: INFERQ_WORKERS.",
)
@click.option(
    "--batch-workers",
    type=click.IntRange(min=0),
    default=None,
    help="Default: INFERQ_BATCH_WORKERS.",
)
@click.option("--trainers", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--webhook-workers", type=click.IntRange(min=0), default=1, show_default=True)
@click.option("--autoscalers", type=click.IntRange(min=0, max=1), default=0, show_default=True)
@reports_errors
def connections(
    api_nodes: int | None,
    workers: int | None,
    batch_workers: int | None,
    trainers: int,
    webhook_workers: int,
    autoscalers: int,
) -> None:
    """The most Postgres connections a fleet of this size opens (INFERQ_*_DB_POOL,
    INFERQ_DB_OVERFLOW, INFERQ_API_PROCESSES), as a Markdown table: what Postgres's
    max_connections, or PgBouncer's max_client_conn, must allow."""
    from inferq.core.connections import Fleet, budget, table

    settings = load_settings(api_nodes=api_nodes, workers=workers, batch_workers=batch_workers)
    local = Fleet.local(settings)
    fleet = Fleet(
        api_nodes=local.api_nodes,
        workers=local.workers,
        batch_workers=local.batch_workers,
        trainers=trainers,
        webhook_workers=webhook_workers,
        autoscalers=autoscalers,
    )
    click.echo(table(budget(settings, fleet)))


COMMANDS = [db]
