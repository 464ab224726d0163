"""The gates a new job passes before it is accepted: idempotency, webhook URL, quotas."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sqlalchemy.orm import Session

from api import idempotency, quotas, webhooks
from api import jobs_service as svc
from api.auth import Principal
from api.state import ApiState
from db.jobs import JobView
from db.models import Job
from db.registry import ServingInfo
from inferq.errors import ServiceUnavailable


def accept(
    st: ApiState,
    principal: Principal,
    info: ServingInfo,
    body: dict[str, Any],
    expires_in_s: float | None,
) -> tuple[JobView, bool]:
    """The job for a validated submission, and whether it is a replay of an earlier one.

    A replay (same ``Idempotency-Key``, same request) skips quotas: it creates nothing.
    """
    key = idempotency.header_key()
    print_ = idempotency.fingerprint(body) if key else ""
    if key:
        earlier = idempotency.replay(st, principal, key, print_)
        if earlier is not None:
            return earlier, True
    url = body.get("webhook")
    if url:
        webhooks.vet(st, url)
    quotas.admit(st, principal.tenant_id, body.get("lane", "online"))
    hooks: list[Callable[[Session, Job], None]] = []
    if url:
        hooks.append(webhooks.attacher(url))
    if key:
        hooks.append(idempotency.claimer(st, principal, key, print_))

    def on_insert(session: Session, job: Job) -> None:
        for hook in hooks:
            hook(session, job)

    try:
        view = svc.accept(st, principal.tenant_id, info, body, expires_in_s, on_insert=on_insert)
    except idempotency.KeyTaken:
        # A concurrent request with the same key won; answer with its job.
        earlier = idempotency.replay(st, principal, key or "", print_)
        if earlier is None:
            raise ServiceUnavailable(
                "A concurrent request with this Idempotency-Key did not finish; retry.",
                headers={"Retry-After": "1"},
            ) from None
        return earlier, True
    if url and view.job.cached:  # born finished: nothing else will deliver its webhook
        webhooks.finished(st, [view.job.id])
    return view, False
