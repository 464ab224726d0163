"""Health of one inferq container, for docker compose healthchecks and Kubernetes exec probes.

    python /opt/inferq/healthcheck.py http URL   # URL answers 2xx (API: /healthz or /readyz)
    python /opt/inferq/healthcheck.py worker     # a worker of this container beats in Redis
    python /opt/inferq/healthcheck.py deps       # Postgres and Redis answer (beat, autoscaler)

Exit status 0 when healthy, 1 (with the reason on stderr) when not. Settings come from the
container's INFERQ_* variables, as for the process being checked.
"""

from __future__ import annotations

import socket
import sys
import urllib.request

TIMEOUT_S = 5


def check_http(url: str) -> None:
    """``url`` answers 2xx (urlopen raises for anything else)."""
    with urllib.request.urlopen(url, timeout=TIMEOUT_S):
        pass


def check_worker() -> None:
    """A worker on this host refreshes its heartbeat: it is alive and reaches Redis.

    Workers name themselves ``<name>@<hostname>/<incarnation>`` and a container's hostname is
    its own.
    """
    from inferq.core.settings import Settings
    from inferq.core.status import live_workers, make_redis

    settings = Settings.from_env()
    here = socket.gethostname()
    client = make_redis(settings)
    if not any(name.split("/")[0].endswith("@" + here) for name in live_workers(client, settings)):
        raise RuntimeError(f"no live worker heartbeat from {here}")


def check_deps() -> None:
    """Postgres and Redis answer."""
    from sqlalchemy import create_engine, text

    from inferq.core.settings import Settings
    from inferq.core.status import make_redis

    settings = Settings.from_env()
    engine = create_engine(
        settings.require_database_url(), connect_args={"connect_timeout": TIMEOUT_S}
    )
    try:
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
    finally:
        engine.dispose()
    make_redis(settings).ping()


def main(argv: list[str]) -> int:
    checks = {"worker": check_worker, "deps": check_deps}
    try:
        if argv[:1] == ["http"] and len(argv) == 2:
            check_http(argv[1])
        elif len(argv) == 1 and argv[0] in checks:
            checks[argv[0]]()
        else:
            print(__doc__, file=sys.stderr)
            return 2
    except Exception as exc:  # any failure is "unhealthy", with its reason
        print(f"unhealthy: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
