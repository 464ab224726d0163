"""Webhooks: a job's delivery log and redelivery; the tenant's signing secret (admin)."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from flask import Blueprint, Response, jsonify

from api.http.auth import current_principal, require
from api.services import jobs as svc
from api.services import webhooks
from api.state import state
from db.tables import TERMINAL_STATUSES
from db.webhooks import DeliveryLog, delivery_log, ensure_secret, get_secret, rotate_secret
from inferq.core.errors import Conflict
from inferq.domain.webhooks import ID_HEADER, SIGNATURE_HEADER, TIMESTAMP_HEADER, new_secret

bp = Blueprint("webhooks", __name__)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _log(job_id: uuid.UUID, log: DeliveryLog | None) -> dict[str, Any]:
    if log is None:
        return {
            "job_id": str(job_id),
            "url": None,
            "status": None,
            "attempts": 0,
            "delivered_at": None,
            "deliveries": [],
        }
    return {
        "job_id": str(job_id),
        "url": log.url,
        "status": log.status,
        "attempts": log.attempts,
        "delivered_at": _iso(log.delivered_at),
        "deliveries": [
            {
                "attempt": d.attempt,
                "redelivery": d.redelivery,
                "ok": d.ok,
                "status_code": d.status_code,
                "error": d.error,
                "duration_ms": None if d.duration_ms is None else round(d.duration_ms, 3),
                "created_at": _iso(d.created_at),
            }
            for d in log.deliveries
        ],
    }


@bp.get("/v1/jobs/<job_id>/webhooks")
@require("read")
def deliveries(job_id: str) -> Response:
    """The job's webhook and every attempt to deliver it."""
    st = state()
    view = svc.load(st, svc.parse_job_id(job_id), current_principal().tenant_id)
    with st.sessions() as session:
        log = delivery_log(session, view.job.id)
    return jsonify(_log(view.job.id, log))


@bp.post("/v1/jobs/<job_id>/webhooks/redeliver")
@require("submit")
def redeliver(job_id: str) -> tuple[Response, int]:
    """Send a finished job's webhook again (with the same event id)."""
    st = state()
    view = svc.load(st, svc.parse_job_id(job_id), current_principal().tenant_id)
    with st.sessions() as session:
        log = delivery_log(session, view.job.id)
    if log is None:
        raise Conflict(f"Job {view.job.id} has no webhook.")
    if view.job.status not in TERMINAL_STATUSES:
        raise Conflict(
            f"Job {view.job.id} is still {view.job.status}; its webhook is sent when it finishes."
        )
    webhooks.publish(st, view.job.id, redelivery=True)
    return jsonify(_log(view.job.id, log) | {"redelivery": "queued"}), 202


def _secret(secret: str, created_at: dt.datetime | None) -> dict[str, Any]:
    return {
        "secret": secret,
        "created_at": _iso(created_at),
        "algorithm": "HMAC-SHA256",
        "signed_content": "<Inferq-Webhook-Timestamp>.<raw body>",
        "headers": [ID_HEADER, TIMESTAMP_HEADER, SIGNATURE_HEADER],
    }


@bp.get("/v1/webhooks/secret")
@require("admin")
def secret() -> Response:
    """The tenant's webhook signing secret (made on first use)."""
    st = state()
    tenant = current_principal().tenant_id
    with st.sessions.begin() as session:
        ensure_secret(session, tenant, new_secret())
        row = get_secret(session, tenant)
        assert row is not None
    return jsonify(_secret(row.secret, row.created_at))


@bp.post("/v1/webhooks/secret/rotate")
@require("admin")
def rotate() -> Response:
    """Replace the tenant's signing secret; deliveries signed from now on use the new one."""
    st = state()
    with st.sessions.begin() as session:
        row = rotate_secret(session, current_principal().tenant_id, new_secret())
    return jsonify(_secret(row.secret, row.created_at))
