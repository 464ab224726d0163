"""Feedback on jobs: what training and experiments learn from."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from db.jobs import is_job
from db.tables import Feedback, Job


def add_feedback(
    session: Session,
    *,
    job_id: uuid.UUID,
    job_created_at: dt.datetime,
    tenant_id: uuid.UUID,
    label: Any = None,
    correct: bool | None = None,
    score: float | None = None,
    comment: str | None = None,
) -> Feedback | None:
    """Record one piece of feedback on a job (a job may collect several; the latest counts);
    None when the job is gone (retention dropped its partition since the caller read it).

    The job is read first, in this transaction: retention detaches a partition of ``jobs``
    only once this transaction ends, and the one of ``feedback`` after it (db/partitions.py).
    """
    if session.scalar(select(Job.id).where(is_job(job_id), Job.tenant_id == tenant_id)) is None:
        return None
    row = Feedback(
        id=uuid.uuid4(),
        job_id=job_id,
        job_created_at=job_created_at,
        tenant_id=tenant_id,
        label=label,
        correct=correct,
        score=score,
        comment=comment,
    )
    session.add(row)
    session.flush()
    return row
