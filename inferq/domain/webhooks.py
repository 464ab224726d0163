"""Webhook signing, shared by the worker that sends and the receivers that verify.

Each delivery is a POST of a JSON body with three headers:

- ``Inferq-Webhook-Id``: the event's id, the same on every retry (receivers dedupe on it);
- ``Inferq-Webhook-Timestamp``: Unix seconds when this attempt was signed;
- ``Inferq-Webhook-Signature``: ``v1=<hex HMAC-SHA256 of "<timestamp>." + body>`` under the
  tenant's secret (``GET /v1/webhooks/secret``, admin scope).

A receiver recomputes the HMAC over the raw body and rejects a timestamp more than five
minutes from its clock, so a captured request cannot be replayed later (:func:`verify`).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
import uuid
from collections.abc import Mapping, Sequence

from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from db.webhooks import jobs_with_webhooks
from inferq.core.broker import publish
from inferq.core.messages import WebhookRequest
from inferq.core.settings import Settings

log = logging.getLogger(__name__)

ID_HEADER = "Inferq-Webhook-Id"
TIMESTAMP_HEADER = "Inferq-Webhook-Timestamp"
SIGNATURE_HEADER = "Inferq-Webhook-Signature"
SECRET_PREFIX = "whsec_"
TOLERANCE_S = 300
MAX_BACKOFF_S = 3600.0


def new_secret() -> str:
    """A fresh signing secret (256 bits)."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of ``"<timestamp>." + body`` under ``secret``."""
    message = str(timestamp).encode() + b"." + body
    return hmac.new(secret.encode(), message, hashlib.sha256).hexdigest()


def signed_headers(
    secret: str, event_id: str, body: bytes, now: float | None = None
) -> dict[str, str]:
    """The headers of one delivery attempt of ``body``."""
    timestamp = int(time.time() if now is None else now)
    return {
        "Content-Type": "application/json",
        "User-Agent": "inferq-webhooks/1",
        ID_HEADER: event_id,
        TIMESTAMP_HEADER: str(timestamp),
        SIGNATURE_HEADER: f"v1={signature(secret, timestamp, body)}",
    }


def verify(
    secret: str,
    headers: Mapping[str, str],
    body: bytes,
    tolerance_s: float = TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """Whether a received delivery is authentic and fresh (what a receiver should check)."""
    try:
        timestamp = int(headers.get(TIMESTAMP_HEADER, ""))
    except ValueError:
        return False
    if abs((time.time() if now is None else now) - timestamp) > tolerance_s:
        return False
    expected = signature(secret, timestamp, body)
    offered = [
        part.strip()[3:]
        for part in headers.get(SIGNATURE_HEADER, "").split(",")
        if part.strip().startswith("v1=")
    ]
    return any(hmac.compare_digest(expected, candidate) for candidate in offered)


def backoff_s(attempt: int, base_s: float) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1, 2, …): doubling, capped."""
    return float(min(MAX_BACKOFF_S, base_s * 2 ** max(0, attempt - 1)))


def notify_finished(
    app: Celery, settings: Settings, sessions: sessionmaker[Session], job_ids: Sequence[uuid.UUID]
) -> None:
    """Queue a delivery for each of these just-finished jobs that has a webhook.

    Whoever finishes jobs calls this once per batch: the worker after storing results, the
    API after a cache hit or a cancel, the scheduler after expiring or failing jobs. Never
    raises: the jobs' results stand, and ``/webhooks/redeliver`` can send a webhook later.
    """
    if not job_ids:
        return
    try:
        with sessions() as session:
            hooked = jobs_with_webhooks(session, list(job_ids))
    except Exception:
        log.exception("could not queue webhook deliveries")
        return
    queue_deliveries(app, settings, hooked)


def queue_deliveries(app: Celery, settings: Settings, hooked: Sequence[uuid.UUID]) -> None:
    """Queue a delivery for each of these finished jobs, known to have a webhook; never
    raises (as notify_finished)."""
    try:
        for job_id in hooked:
            publish(app, settings, WebhookRequest(str(job_id)))
    except Exception:
        log.exception("could not queue webhook deliveries")
