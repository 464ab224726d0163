"""Counts behind the quotas: a tenant's queued jobs and a lane's backlog.

Each count stops at ``cap`` (a ``LIMIT`` inside), so checking a limit costs at most the limit's
worth of index entries however deep the queue is.
"""

from __future__ import annotations

import uuid

from sqlalchemy import Connection, func, select
from sqlalchemy.orm import Session

from db.tables import Job


def queued_jobs_of_tenant(session: Session | Connection, tenant_id: uuid.UUID, cap: int) -> int:
    """How many of the tenant's online jobs are queued, counting at most ``cap`` (a batch's
    items have their own limits and must not lock the tenant out of online work)."""
    capped = (
        select(Job.id)
        .where(Job.tenant_id == tenant_id, Job.status == "queued", Job.lane != "batch")
        .limit(cap)
    ).subquery()
    return session.scalar(select(func.count()).select_from(capped)) or 0


def queued_jobs_in_lane(session: Session | Connection, lane: str, cap: int) -> int:
    """How many jobs wait in ``lane`` (queued, not yet claimed), counting at most ``cap``."""
    capped = (select(Job.id).where(Job.lane == lane, Job.status == "queued").limit(cap)).subquery()
    return session.scalar(select(func.count()).select_from(capped)) or 0
