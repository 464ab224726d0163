"""Webhooks: a job's callback URL, each delivery attempt, and each tenant's signing secret."""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from db.jobs import JobView, get_job_view, of_job, time_window
from db.tables import Job, Webhook, WebhookDelivery, WebhookSecret


def add_webhook(session: Session, job: Job, url: str) -> None:
    """Attach ``url`` to a job (in the transaction that creates the job)."""
    session.execute(insert(Webhook).values(job_id=job.id, job_created_at=job.created_at, url=url))


def jobs_with_webhooks(session: Session, job_ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """Those of ``job_ids`` that have a webhook."""
    if not job_ids:
        return []
    since, until = time_window(job_ids)
    return list(
        session.scalars(
            select(Webhook.job_id).where(
                Webhook.job_id.in_(list(job_ids)), Webhook.job_created_at.between(since, until)
            )
        )
    )


@dataclasses.dataclass(frozen=True)
class DeliveryTarget:
    """What a delivery needs: the job as its tenant sees it, the URL, the signing secret."""

    view: JobView
    url: str
    status: str
    attempts: int
    secret: str


def delivery_target(session: Session, job_id: uuid.UUID, new_secret: str) -> DeliveryTarget | None:
    """The job's webhook and its tenant's secret (``new_secret`` is stored when it has none);
    None when the job has no webhook (or no longer exists)."""
    row = session.execute(
        select(Webhook, Job.tenant_id)
        .join(Job, (Job.id == Webhook.job_id) & (Job.created_at == Webhook.job_created_at))
        .where(of_job(Webhook.job_id, Webhook.job_created_at, job_id))
    ).one_or_none()
    if row is None:
        return None
    webhook, tenant_id = row
    view = get_job_view(session, job_id, tenant_id)
    if view is None:
        return None
    secret = ensure_secret(session, tenant_id, new_secret)
    return DeliveryTarget(view, webhook.url, webhook.status, webhook.attempts, secret)


def record_delivery(
    session: Session,
    job_id: uuid.UUID,
    *,
    redelivery: bool,
    ok: bool,
    status_code: int | None,
    error: str | None,
    duration_ms: float | None,
    final: bool,
) -> int:
    """Log one attempt and update the webhook's state; returns the attempt's number (0 when
    the webhook is gone: retention dropped its job, and its log with it).

    The webhook is ``delivered`` after a success, ``failed`` after a ``final`` failure and
    stays ``pending`` while retries remain. The webhook is updated first, in this
    transaction: retention detaches a partition of ``webhooks`` only once this transaction
    ends, and the one of ``webhook_deliveries`` after it (db/partitions.py).
    """
    status = "delivered" if ok else ("failed" if final else "pending")
    values: dict[str, object] = {"attempts": Webhook.attempts + 1, "status": status}
    if ok:
        values["delivered_at"] = func.now()
    row = session.execute(
        update(Webhook)
        .where(of_job(Webhook.job_id, Webhook.job_created_at, job_id))
        .values(**values)
        .returning(Webhook.attempts, Webhook.job_created_at)
    ).one_or_none()
    if row is None:
        return 0
    attempt, job_created_at = row
    session.add(
        WebhookDelivery(
            job_id=job_id,
            job_created_at=job_created_at,
            attempt=attempt,
            redelivery=redelivery,
            ok=ok,
            status_code=status_code,
            error=(error or None) and error[:1000],
            duration_ms=duration_ms,
        )
    )
    session.flush()
    return int(attempt)


@dataclasses.dataclass(frozen=True)
class DeliveryLog:
    """A job's webhook and every attempt to deliver it, oldest first."""

    url: str
    status: str
    attempts: int
    delivered_at: dt.datetime | None
    deliveries: list[WebhookDelivery]


def delivery_log(session: Session, job_id: uuid.UUID) -> DeliveryLog | None:
    """The delivery log of a job's webhook; None when the job has none."""
    webhook = session.scalars(
        select(Webhook).where(of_job(Webhook.job_id, Webhook.job_created_at, job_id))
    ).one_or_none()
    if webhook is None:
        return None
    deliveries = list(
        session.scalars(
            select(WebhookDelivery)
            .where(
                WebhookDelivery.job_id == job_id,
                WebhookDelivery.job_created_at == webhook.job_created_at,
            )
            .order_by(WebhookDelivery.id)
            .limit(1000)
        )
    )
    return DeliveryLog(
        webhook.url, webhook.status, webhook.attempts, webhook.delivered_at, deliveries
    )


def ensure_secret(session: Session, tenant_id: uuid.UUID, candidate: str) -> str:
    """The tenant's signing secret; ``candidate`` becomes it when the tenant has none yet."""
    session.execute(
        insert(WebhookSecret)
        .values(tenant_id=tenant_id, secret=candidate)
        .on_conflict_do_nothing(index_elements=[WebhookSecret.tenant_id])
    )
    secret = session.scalar(
        select(WebhookSecret.secret).where(WebhookSecret.tenant_id == tenant_id)
    )
    assert secret is not None
    return secret


def rotate_secret(session: Session, tenant_id: uuid.UUID, secret: str) -> WebhookSecret:
    """Replace the tenant's signing secret with ``secret``."""
    row = session.scalars(
        insert(WebhookSecret)
        .values(tenant_id=tenant_id, secret=secret)
        .on_conflict_do_update(
            index_elements=[WebhookSecret.tenant_id],
            set_={"secret": secret, "created_at": func.now()},
        )
        .returning(WebhookSecret)
    ).one()
    return row


def get_secret(session: Session, tenant_id: uuid.UUID) -> WebhookSecret | None:
    """The tenant's signing secret row, or None."""
    return session.get(WebhookSecret, tenant_id)
