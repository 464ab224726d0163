"""``Idempotency-Key`` on ``POST /v1/jobs`` (IETF draft-ietf-httpapi-idempotency-key, Stripe).

A key is scoped to the API key that sent it and remembered for ``idempotency_ttl_s``
(24 h by default). Within that time the same key with the same request (canonical JSON body
and ``Cancel-After``) answers with the job the first request made; with a different request
it is a 422. Two requests with the same key at the same moment make one job: the key is
claimed in the transaction that inserts the job (see :mod:`db.idempotency`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from flask import request
from sqlalchemy.orm import Session

from api.http.auth import Principal
from api.state import ApiState
from db.engine import retry_on_disconnect
from db.idempotency import claim_key, find_key
from db.jobs import JobView, get_job_view
from db.tables import Job
from inferq.core.errors import BadRequest, InvalidInput

HEADER = "Idempotency-Key"
MAX_KEY_LENGTH = 255


class KeyTaken(Exception):
    """Raised inside a job's transaction when its key was claimed concurrently; rolls the new
    job back so the caller can answer with the job that claimed the key."""


def header_key() -> str | None:
    """The request's idempotency key (a bare or quoted string), or None; 400 when unusable."""
    raw = request.headers.get(HEADER)
    if raw is None:
        return None
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':  # the draft's sf-string form
        key = key[1:-1]
    if not key or len(key) > MAX_KEY_LENGTH or not (key.isascii() and key.isprintable()):
        raise BadRequest(
            f"{HEADER} must be 1 to {MAX_KEY_LENGTH} printable ASCII characters "
            "(a UUID is a good choice)."
        )
    return key


def fingerprint(body: dict[str, Any]) -> str:
    """SHA-256 of what defines the job: the body (key order ignored) and ``Cancel-After``."""
    canonical = json.dumps(
        {"body": body, "cancel_after": request.headers.get("Cancel-After")},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(canonical.encode()).hexdigest()


def replay(st: ApiState, principal: Principal, key: str, print_: str) -> JobView | None:
    """The job this key already made, or None; 422 when it was made by another request."""

    def read() -> JobView | None:
        with st.sessions() as session:
            row = find_key(session, principal.key_id, key, st.settings.quotas.idempotency_ttl_s)
            if row is None:
                return None
            if row.fingerprint != print_:
                raise InvalidInput(
                    f"This {HEADER} was used with a different request in the last "
                    f"{st.settings.quotas.idempotency_ttl_s // 3600} h; "
                    "use a new key for a new job.",
                    errors=[{"pointer": "/", "detail": f"does not match the {HEADER}'s request"}],
                )
            return get_job_view(session, row.job_id, principal.tenant_id)

    return retry_on_disconnect(read)


def claimer(
    st: ApiState, principal: Principal, key: str, print_: str
) -> Callable[[Session, Job], None]:
    """A hook for the job's transaction: claims the key for the new job, or raises
    :class:`KeyTaken` when a live claim exists."""

    def claim(session: Session, job: Job) -> None:
        ttl = st.settings.quotas.idempotency_ttl_s
        if not claim_key(session, principal.key_id, key, print_, job.id, ttl):
            raise KeyTaken(key)

    return claim
