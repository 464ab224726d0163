"""What the CLI commands share: settings, database sessions, error reporting."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click

from inferq.core.errors import InferqError
from inferq.core.logs import info as info
from inferq.core.settings import Settings

F = TypeVar("F", bound=Callable[..., Any])


def load_settings(**overrides: Any) -> Settings:
    """Settings from the environment, with CLI flags as overrides. Where the environment
    names no database or broker, those of the ``inferq up`` running from ``INFERQ_HOME``
    (default ``./var``) are used, as ``inferq submit`` finds its URL there."""
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = Settings.from_env(**given)
    if settings.database_url and settings.broker_url:
        return settings
    from inferq.local.stack import running_services

    found = running_services(Path(settings.home))
    missing = {k: v for k, v in found.items() if getattr(settings, k) is None and k not in given}
    return settings.replace(**missing) if missing else settings


def reports_errors(func: F) -> F:
    """Turn inferq errors into a one-line message on stderr and exit status 1."""

    @wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except InferqError as exc:
            click.echo(f"error: {exc}", err=True)
            sys.exit(1)

    return wrapper  # type: ignore[return-value]


@contextmanager
def db_session(settings: Settings) -> Iterator[Any]:
    """A committed-on-success session on the configured database."""
    from db.engine import short_session

    with short_session(settings.require_database_url()) as session:
        yield session
