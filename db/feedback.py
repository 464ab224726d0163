"""Feedback on jobs: what training and experiments learn from."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.orm import Session

from db.tables import Feedback


def add_feedback(
    session: Session,
    *,
    job_id: uuid.UUID,
    tenant_id: uuid.UUID,
    label: Any = None,
    correct: bool | None = None,
    score: float | None = None,
    comment: str | None = None,
) -> Feedback:
    """Record one piece of feedback on a job (a job may collect several; the latest counts)."""
    row = Feedback(
        id=uuid.uuid4(),
        job_id=job_id,
        tenant_id=tenant_id,
        label=label,
        correct=correct,
        score=score,
        comment=comment,
    )
    session.add(row)
    session.flush()
    return row
