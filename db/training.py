"""Training runs, and the feedback they learn from and are judged by.

A run moves ``queued`` -> ``running`` -> ``succeeded`` | ``failed``, each step a guarded
update, so a redelivered training message changes nothing. At most one run per model is
open (queued or running) at a time: a unique partial index decides races between beats,
drift checks and admins.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from typing import Any

from sqlalchemy import Float, and_, cast, func, select, union_all, update
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.tables import Feedback, Job, Model, TrainingExample, TrainingRun

OPEN = ("queued", "running")


@dataclasses.dataclass(frozen=True)
class LabelledJob:
    """A served job with the true label its latest feedback gave."""

    job_id: uuid.UUID
    input: dict[str, Any]
    label: Any
    version_id: int


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def fail_stale(session: Session, model_id: int, older_than_s: float) -> int:
    """Fail open runs of ``model_id`` created longer ago than ``older_than_s`` (their worker
    died); returns how many."""
    cutoff = _utcnow() - dt.timedelta(seconds=older_than_s)
    result = session.execute(
        update(TrainingRun)
        .where(
            TrainingRun.model_id == model_id,
            TrainingRun.status.in_(OPEN),
            TrainingRun.created_at < cutoff,
        )
        .values(
            status="failed",
            error="timed out: no result within the time limit",
            completed_at=func.now(),
        )
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


def open_run(
    session: Session,
    model_id: int,
    *,
    trigger: str,
    requested_by: str,
    stale_after_s: float,
) -> TrainingRun | None:
    """Insert a queued run for ``model_id``; None when one is already open."""
    fail_stale(session, model_id, stale_after_s)
    row = TrainingRun(
        id=uuid.uuid4(),
        model_id=model_id,
        status="queued",
        trigger=trigger,
        requested_by=requested_by[:128],
        progress=0.0,
        stage="queued",
        metrics={},
    )
    try:
        with session.begin_nested():
            session.add(row)
            session.flush()
    except IntegrityError:
        return None
    return row


def open_run_of(session: Session, model_id: int) -> TrainingRun | None:
    """The model's open run, if any."""
    return session.scalars(
        select(TrainingRun).where(TrainingRun.model_id == model_id, TrainingRun.status.in_(OPEN))
    ).one_or_none()


def latest_run(session: Session, model_id: int) -> TrainingRun | None:
    """The model's newest run, if any."""
    return session.scalars(
        select(TrainingRun)
        .where(TrainingRun.model_id == model_id)
        .order_by(TrainingRun.created_at.desc())
        .limit(1)
    ).one_or_none()


def get_run(session: Session, run_id: uuid.UUID) -> tuple[TrainingRun, str] | None:
    """The run and its model's name, or None."""
    row = session.execute(
        select(TrainingRun, Model.name)
        .join(Model, Model.id == TrainingRun.model_id)
        .where(TrainingRun.id == run_id)
    ).one_or_none()
    return (row[0], row[1]) if row else None


def last_run_at(session: Session, model_id: int) -> dt.datetime | None:
    """When the model's latest run was created."""
    return session.scalar(
        select(func.max(TrainingRun.created_at)).where(TrainingRun.model_id == model_id)
    )


def start_run(session: Session, run_id: uuid.UUID, base_version_id: int | None) -> bool:
    """Mark a queued run running; False when it is not queued (run already, or ended)."""
    result = session.execute(
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.status == "queued")
        .values(
            status="running",
            started_at=func.now(),
            base_version_id=base_version_id,
            stage="loading data",
            progress=0.05,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def set_progress(session: Session, run_id: uuid.UUID, progress: float, stage: str) -> None:
    """Record how far a running run is."""
    session.execute(
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.status == "running")
        .values(progress=progress, stage=stage[:64])
    )


def finish_run(session: Session, run_id: uuid.UUID, *, status: str, **fields: Any) -> bool:
    """End a running run as ``succeeded`` or ``failed`` with ``fields`` (metrics, error…)."""
    result = session.execute(
        update(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.status == "running")
        .values(
            status=status,
            completed_at=func.now(),
            duration_s=func.extract("epoch", func.now() - TrainingRun.started_at),
            **fields,
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


def _latest_feedback() -> Any:
    """Each job's latest feedback (a job may collect several; the latest counts)."""
    return (
        select(Feedback.job_id, Feedback.label)
        .ext(distinct_on(Feedback.job_id))
        .order_by(Feedback.job_id, Feedback.created_at.desc())
        .subquery()
    )


#: The most labelled jobs retraining learns from (the newest); retention keeps no more
#: training examples than this per model.
TRAINING_WINDOW = 50_000


def labelled_feedback(
    session: Session, model_id: int, limit: int = TRAINING_WINDOW
) -> list[LabelledJob]:
    """The model's newest succeeded jobs whose latest feedback carries a label: those still
    kept, and those retention dropped after keeping them as training examples."""
    latest = _latest_feedback()
    live = (
        select(
            Job.id.label("job_id"),
            Job.input,
            latest.c.label,
            Job.version_id,
            Job.created_at.label("at"),
        )
        .join(latest, latest.c.job_id == Job.id)
        .where(Job.model_id == model_id, Job.status == "succeeded", latest.c.label.is_not(None))
    )
    kept = select(
        TrainingExample.job_id,
        TrainingExample.input,
        TrainingExample.label,
        TrainingExample.version_id,
        TrainingExample.job_created_at.label("at"),
    ).where(TrainingExample.model_id == model_id)
    both = union_all(live, kept).subquery()
    rows = session.execute(
        select(both.c.job_id, both.c.input, both.c.label, both.c.version_id)
        .order_by(both.c.at.desc())
        .limit(limit)
    )
    return [LabelledJob(*row) for row in rows]


def version_accuracy(session: Session, version_id: int, since: dt.datetime) -> tuple[int, int]:
    """``(judged, correct)`` of a version's jobs since ``since``: their latest feedback
    label against the output's label."""
    latest = _latest_feedback()
    right = Job.output["label"] == latest.c.label
    row = session.execute(
        select(func.count(), func.count().filter(right))
        .select_from(Job)
        .join(latest, latest.c.job_id == Job.id)
        .where(
            Job.version_id == version_id,
            Job.status == "succeeded",
            Job.created_at >= since,
            latest.c.label.is_not(None),
        )
    ).one()
    return int(row[0]), int(row[1])


def mean_input(
    session: Session, model_id: int, since: dt.datetime, until: dt.datetime, limit: int = 2000
) -> tuple[int, float | None]:
    """``(jobs, mean value)`` over the ``pixels`` arrays of the model's newest jobs created in
    ``[since, until)`` (at most ``limit`` jobs)."""
    recent = (
        select(Job.input)
        .where(
            Job.model_id == model_id,
            Job.created_at >= since,
            Job.created_at < until,
            Job.input.has_key("pixels"),
        )
        .order_by(Job.created_at.desc())
        .limit(limit)
        .subquery()
    )
    values = func.jsonb_array_elements_text(recent.c.input["pixels"]).table_valued("value")
    mean = session.scalar(select(func.avg(cast(values.c.value, Float))).select_from(recent, values))
    jobs = session.scalar(select(func.count()).select_from(recent))
    return int(jobs or 0), (float(mean) if mean is not None else None)


def pending_rollouts(session: Session) -> list[uuid.UUID]:
    """Succeeded runs whose candidate waits for the rollout policy, oldest first."""
    return list(
        session.scalars(
            select(TrainingRun.id)
            .where(and_(TrainingRun.status == "succeeded", TrainingRun.rollout == "pending"))
            .order_by(TrainingRun.completed_at)
        )
    )


def lock_pending(session: Session, run_id: uuid.UUID) -> TrainingRun | None:
    """Lock a run still waiting for its rollout (skipped when another scheduler holds it)."""
    return session.scalars(
        select(TrainingRun)
        .where(TrainingRun.id == run_id, TrainingRun.rollout == "pending")
        .with_for_update(skip_locked=True)
    ).one_or_none()


def run_dict(run: TrainingRun, model: str) -> dict[str, Any]:
    """A run as the API and CLI show it."""

    def when(value: dt.datetime | None) -> str | None:
        return value.isoformat() if value else None

    return {
        "id": str(run.id),
        "model": model,
        "status": run.status,
        "trigger": run.trigger,
        "requested_by": run.requested_by,
        "progress": round(float(run.progress or 0.0), 4),
        "stage": run.stage,
        "base_version_id": run.base_version_id,
        "candidate_version_id": run.candidate_version_id,
        "feedback_train": run.feedback_train,
        "feedback_eval": run.feedback_eval,
        "metrics": run.metrics or {},
        "error": run.error,
        "rollout": run.rollout,
        "rollout_reason": run.rollout_reason,
        "experiment_id": str(run.experiment_id) if run.experiment_id else None,
        "created_at": when(run.created_at),
        "started_at": when(run.started_at),
        "completed_at": when(run.completed_at),
        "duration_s": run.duration_s,
    }
