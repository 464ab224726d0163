"""Delivering webhooks: the signed POST, the SSRF guard right before it, the delivery log.

One attempt per call of :func:`deliver`; the task (``workers/tasks/webhooks.py``) retries a
failed attempt with backoff. The connection goes to the address the guard vetted (no second
DNS lookup to rebind), redirects are never followed, and the response body is not read
beyond a small bound.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from collections.abc import Sequence
from typing import Any

import urllib3

from db.jobs import JobView, StoredResult
from db.tables import TERMINAL_STATUSES
from db.webhooks import delivery_target, record_delivery
from inferq.core.errors import UnsafeUrl
from inferq.domain.ssrf import Allowlist, Destination, check_url
from inferq.domain.webhooks import new_secret, notify_finished, queue_deliveries, signed_headers
from workers.context import WorkerContext

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 4096


@dataclasses.dataclass(frozen=True)
class Outcome:
    """What one attempt came to; ``retry`` when a later attempt may succeed."""

    ok: bool
    retry: bool
    status_code: int | None = None
    error: str | None = None


def payload(view: JobView) -> dict[str, Any]:
    """The JSON a receiver gets: the event and the finished job."""
    job = view.job
    return {
        "id": f"evt_{job.id}",
        "type": f"job.{job.status}",
        "job": {
            "id": str(job.id),
            "model": view.model,
            "version": view.version,
            "status": job.status,
            "output": job.output,
            "error": job.error,
            "user": job.user,
            "cached": job.cached,
            "created_at": job.created_at.isoformat(),
            "started_at": job.started_at.isoformat() if job.started_at else None,
            "completed_at": job.completed_at.isoformat() if job.completed_at else None,
        },
    }


def post(destination: Destination, body: bytes, headers: dict[str, str], timeout_s: float) -> int:
    """POST ``body`` to the vetted address; returns the status code (redirects not followed)."""
    options: dict[str, Any] = {"timeout": urllib3.Timeout(total=timeout_s), "retries": False}
    if destination.scheme == "https":
        pool: urllib3.HTTPConnectionPool = urllib3.HTTPSConnectionPool(
            destination.address,
            destination.port,
            server_hostname=destination.host,
            assert_hostname=destination.host,
            cert_reqs="CERT_REQUIRED",
            **options,
        )
    else:
        pool = urllib3.HTTPConnectionPool(destination.address, destination.port, **options)
    with pool:
        response = pool.urlopen(
            "POST",
            destination.target,
            body=body,
            headers={**headers, "Host": destination.host_header},
            redirect=False,
            preload_content=False,
        )
        response.read(MAX_RESPONSE_BYTES)
        response.release_conn()
        return int(response.status)


def attempt(ctx: WorkerContext, url: str, view: JobView, secret: str) -> Outcome:
    """Vet ``url``, sign and send; never raises."""
    settings = ctx.settings
    try:
        destination = check_url(url, Allowlist.parse(settings.webhooks.webhook_allowlist))
    except UnsafeUrl as exc:  # the address may have changed since submit; never retried
        return Outcome(ok=False, retry=False, error=f"refused: {exc}")
    body = json.dumps(payload(view), separators=(",", ":"), default=str).encode()
    headers = signed_headers(secret, f"evt_{view.job.id}", body)
    try:
        status = post(destination, body, headers, settings.webhooks.webhook_timeout_s)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        return Outcome(ok=False, retry=True, error=f"{type(exc).__name__}: {exc}"[:500])
    if 200 <= status < 300:
        return Outcome(ok=True, retry=False, status_code=status)
    reason = "redirects are not followed" if 300 <= status < 400 else "not a 2xx answer"
    return Outcome(ok=False, retry=True, status_code=status, error=f"HTTP {status}: {reason}")


def deliver(ctx: WorkerContext, job_id: str, try_number: int, redelivery: bool) -> Outcome:
    """One attempt to deliver a finished job's webhook, recorded in its delivery log."""
    try:
        ident = uuid.UUID(str(job_id))
    except ValueError:
        log.warning("dropping a webhook message with a malformed job id")
        return Outcome(ok=False, retry=False, error="malformed job id")
    with ctx.sessions.begin() as session:
        target = delivery_target(session, ident, new_secret())
    if target is None or target.view.job.status not in TERMINAL_STATUSES:
        return Outcome(ok=False, retry=False, error="no webhook to deliver")
    if target.status == "delivered" and not redelivery and try_number == 1:
        return Outcome(ok=True, retry=False)  # a redelivered message: it already arrived
    started = time.perf_counter()
    outcome = attempt(ctx, target.url, target.view, target.secret)
    final = not outcome.retry or try_number >= ctx.settings.webhooks.webhook_max_attempts
    with ctx.sessions.begin() as session:
        record_delivery(
            session,
            ident,
            redelivery=redelivery,
            ok=outcome.ok,
            status_code=outcome.status_code,
            error=outcome.error,
            duration_ms=(time.perf_counter() - started) * 1000,
            final=final,
        )
    return dataclasses.replace(outcome, retry=outcome.retry and not final)


def dispatch_finished(ctx: WorkerContext, stored: Sequence[StoredResult]) -> None:
    """Queue deliveries for the just-stored jobs that have a webhook; never raises. Results
    that say whether they have one (store_results) cost no query."""
    queue_deliveries(ctx.app, ctx.settings, [s.id for s in stored if s.hooked])
    unknown = [s.id for s in stored if s.hooked is None]
    notify_finished(ctx.app, ctx.settings, ctx.sessions, unknown)
