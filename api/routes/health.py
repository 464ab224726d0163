"""Liveness and readiness."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request
from sqlalchemy import text

from api.state import ApiState, state
from inferq.core.errors import BadRequest
from inferq.domain.fleet import ready_workers

#: The lane whose consumers make the system ready: where a submitted job goes by default.
SERVED_LANE = "online"

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
    """Ready when a job submitted now runs: Postgres, Redis and the broker answer and a
    worker consumes the online lane (``?scope=node``: this node's dependencies alone)."""
    st = state()
    scope = request.args.get("scope", "system")
    if scope not in ("system", "node"):
        raise BadRequest("scope must be `system` or `node`")

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
    if scope == "system":
        # Not for a load balancer's probe: without workers the API still accepts jobs,
        # durably, and they run once a worker comes (or the autoscaler starts one).
        checks["workers"] = _workers(st)
    ready = all(v == "ok" for v in checks.values())
    return jsonify(
        {"status": "ready" if ready else "unavailable", "checks": checks}
    ), 200 if ready else 503


def _workers(st: ApiState) -> str:
    try:
        count = ready_workers(st.redis, st.settings, SERVED_LANE)
    except Exception as exc:
        return f"unavailable: {type(exc).__name__}"
    return "ok" if count else f"unavailable: no worker consumes the {SERVED_LANE} lane yet"
