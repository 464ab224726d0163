"""Alembic environment: online migrations against the configured URL, one lock at a time."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, pool, text

from db.tables import Base

# Two processes upgrading at once (two API nodes starting together) must not race.
MIGRATION_LOCK = 7_311_224_001


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "sqlalchemy.url is not set"
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        # Held until the migrations' transaction ends, commit or rollback: a lock held by
        # the session would outlive a failed run on a pooled (PgBouncer) server connection.
        connection.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": MIGRATION_LOCK})
        context.configure(connection=connection, target_metadata=Base.metadata, compare_type=True)
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()


run_migrations_online()
