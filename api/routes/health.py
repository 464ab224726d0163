"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from sqlalchemy import text

from api.state import state

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz() -> Response:
    """The process answers."""
    return jsonify({"status": "ok"})


def _check(probe: object) -> str:
    try:
        probe()  # type: ignore[operator]
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok"


@bp.get("/readyz")
def readyz() -> tuple[Response, int]:
    """Ready when Postgres, Redis and the broker all answer."""
    st = state()

    def database() -> None:
        with st.sessions() as session:
            session.execute(text("SELECT 1"))

    def broker() -> None:
        with st.celery.connection_for_write() as connection:
            connection.ensure_connection(max_retries=1, timeout=st.settings.api.publish_timeout_s)

    checks = {
        "database": _check(database),
        "redis": _check(st.redis.ping),
        "broker": _check(broker),
    }
    ready = all(v == "ok" for v in checks.values())
    return jsonify(
        {"status": "ready" if ready else "unavailable", "checks": checks}
    ), 200 if ready else 503
