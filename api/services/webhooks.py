"""The API's side of webhooks: vet the URL at submit, attach it to the job, ask a worker to
deliver it when the API itself finishes a job (a cache hit, a cancel)."""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable

from sqlalchemy.orm import Session

from api.state import ApiState
from db.tables import Job
from db.webhooks import add_webhook
from inferq.core.broker import publish as publish_message
from inferq.core.errors import InvalidInput, ServiceUnavailable, UnsafeUrl
from inferq.core.messages import WebhookRequest
from inferq.domain.ssrf import Allowlist, check_url
from inferq.domain.webhooks import notify_finished

log = logging.getLogger(__name__)


def vet(st: ApiState, url: str) -> None:
    """422 unless ``url`` is an http(s) URL the SSRF guard allows (host names are resolved
    and checked by the worker, before each delivery)."""
    try:
        check_url(url, Allowlist.parse(st.settings.webhooks.webhook_allowlist), resolver=None)
    except UnsafeUrl as exc:
        raise InvalidInput(
            f"/webhook is refused: {exc}.", errors=[{"pointer": "/webhook", "detail": str(exc)}]
        ) from None


def attacher(url: str) -> Callable[[Session, Job], None]:
    """A hook for the job's transaction that stores its webhook with it."""

    def attach(session: Session, job: Job) -> None:
        add_webhook(session, job, url)

    return attach


def publish(st: ApiState, job_id: uuid.UUID, redelivery: bool = False) -> None:
    """Queue a delivery; 503 when the broker cannot take it."""
    try:
        publish_message(st.celery, st.settings, WebhookRequest(str(job_id), redelivery))
    except Exception as exc:
        log.warning("could not queue a webhook delivery", extra={"job_id": str(job_id)})
        raise ServiceUnavailable(
            "The queue is unavailable; retry shortly.", headers={"Retry-After": "2"}
        ) from exc


def finished(st: ApiState, job_ids: list[uuid.UUID]) -> None:
    """Queue deliveries for jobs the API itself finished (a cache hit, a cancel)."""
    notify_finished(st.celery, st.settings, st.sessions, job_ids)
