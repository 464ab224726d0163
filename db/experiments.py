"""Experiments: their rows, the per-arm aggregates their reports are built from, shadow results.

Reports are computed in Postgres from the jobs themselves (one grouped query per report), so
there is no counter to keep in step with the jobs and nothing to lose when a process dies.
A job's quality comes from its latest feedback: a ``label`` is compared with the output's
``label`` (for every model whose outputs carry one), otherwise the ``correct`` verdict counts.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from db.jobs import time_window
from db.tables import Experiment, Model


@dataclasses.dataclass(frozen=True)
class ArmStats:
    """What an arm's jobs did: counts, latency (ms, submit to result) and feedback."""

    arm: str
    jobs: int
    succeeded: int
    failed: int
    canceled: int
    latency_p50: float | None
    latency_p90: float | None
    latency_p99: float | None
    predict_ms_p50: float | None
    judged: int
    correct: int
    mean_score: float | None


@dataclasses.dataclass(frozen=True)
class ShadowStats:
    """What a shadow arm did on its copies of the traffic, against the served output."""

    arm: str
    runs: int
    succeeded: int
    failed: int
    predict_ms_p50: float | None
    predict_ms_p90: float | None
    predict_ms_p99: float | None
    compared: int
    agreed: int
    #: jobs whose feedback label judges both outputs
    paired: int
    correct: int
    control_correct: int
    #: of the paired jobs: only the served output was right / only the shadow's was
    control_only: int
    shadow_only: int


@dataclasses.dataclass(frozen=True)
class ShadowInput:
    """A job a shadow arm runs on: its id and input."""

    id: uuid.UUID
    input: dict[str, Any]
    created_at: dt.datetime


def create_experiment(
    session: Session,
    *,
    model_id: int,
    name: str | None,
    mode: str,
    arms: list[dict[str, Any]],
    policy: dict[str, Any],
    created_by: str,
) -> Experiment | None:
    """Insert a running experiment; None when the model already has one running."""
    row = Experiment(
        id=uuid.uuid4(),
        model_id=model_id,
        name=name,
        mode=mode,
        arms=arms,
        policy=policy,
        status="running",
        created_by=created_by[:128],
    )
    try:
        with session.begin_nested():  # the unique index on running experiments decides races
            session.add(row)
            session.flush()
    except IntegrityError:
        return None
    return row


def get_experiment(session: Session, experiment_id: uuid.UUID) -> tuple[Experiment, str] | None:
    """The experiment and its model's name, or None."""
    row = session.execute(
        select(Experiment, Model.name)
        .join(Model, Model.id == Experiment.model_id)
        .where(Experiment.id == experiment_id)
    ).one_or_none()
    return (row[0], row[1]) if row else None


def list_experiments(
    session: Session, model: str | None = None, status: str | None = None, limit: int = 100
) -> list[tuple[Experiment, str]]:
    """Experiments (newest first) with their model's name, optionally filtered."""
    query = select(Experiment, Model.name).join(Model, Model.id == Experiment.model_id)
    if model is not None:
        query = query.where(Model.name == model)
    if status is not None:
        query = query.where(Experiment.status == status)
    rows = session.execute(query.order_by(Experiment.created_at.desc()).limit(limit))
    return [(row[0], row[1]) for row in rows]


def running_experiment(session: Session, model_name: str) -> Experiment | None:
    """The running experiment of the model named ``model_name``, or None."""
    return session.scalars(
        select(Experiment)
        .join(Model, Model.id == Experiment.model_id)
        .where(Model.name == model_name, Experiment.status == "running")
    ).one_or_none()


def running_ids(session: Session) -> list[uuid.UUID]:
    """Ids of every running experiment, oldest first."""
    return list(
        session.scalars(
            select(Experiment.id)
            .where(Experiment.status == "running")
            .order_by(Experiment.created_at)
        )
    )


def lock_running(session: Session, experiment_id: uuid.UUID) -> Experiment | None:
    """The experiment, locked for a decision, if it is still running and nobody else holds it."""
    return session.scalars(
        select(Experiment)
        .where(Experiment.id == experiment_id, Experiment.status == "running")
        .with_for_update(skip_locked=True)
    ).one_or_none()


def finish(
    session: Session,
    experiment_id: uuid.UUID,
    *,
    status: str,
    decision: str,
    reason: str,
    by: str,
    winner: str | None = None,
) -> bool:
    """End a running experiment and record why; False when it was not running any more."""
    result = session.execute(
        update(Experiment)
        .where(Experiment.id == experiment_id, Experiment.status == "running")
        .values(
            status=status,
            decision=decision,
            winner=winner,
            reason=reason,
            decided_by=by[:128],
            decided_at=func.now(),
        )
    )
    return bool(result.rowcount)  # type: ignore[attr-defined]


# The latest feedback per job, and whether it says the served output was right.
_JUDGED = """
    WITH latest AS (
        SELECT DISTINCT ON (f.job_id) f.job_id, f.label, f.correct, f.score
          FROM feedback f JOIN jobs j ON j.id = f.job_id
         WHERE j.experiment_id = :experiment
         ORDER BY f.job_id, f.created_at DESC, f.id
    ),
    judged AS (
        SELECT j.id, j.arm, j.status, j.output, j.created_at, j.completed_at, j.predict_ms,
               l.label, l.score,
               CASE WHEN j.status <> 'succeeded' OR l.job_id IS NULL THEN NULL
                    WHEN l.label IS NOT NULL AND j.output -> 'label' IS NOT NULL
                         THEN l.label = j.output -> 'label'
                    ELSE l.correct END AS ok
          FROM jobs j LEFT JOIN latest l ON l.job_id = j.id
         WHERE j.experiment_id = :experiment
    )
"""

_ARM_STATS = text(
    _JUDGED
    + """
    SELECT arm,
           count(*),
           count(*) FILTER (WHERE status = 'succeeded'),
           count(*) FILTER (WHERE status = 'failed'),
           count(*) FILTER (WHERE status = 'canceled'),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY latency) FILTER (WHERE ok_status),
           percentile_cont(0.9) WITHIN GROUP (ORDER BY latency) FILTER (WHERE ok_status),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY latency) FILTER (WHERE ok_status),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY predict_ms) FILTER (WHERE ok_status),
           count(ok),
           count(*) FILTER (WHERE ok),
           avg(score)
      FROM (SELECT *, status = 'succeeded' AS ok_status,
                   extract(epoch FROM completed_at - created_at) * 1000 AS latency
              FROM judged) AS j
     GROUP BY arm
    """
)


def arm_stats(session: Session, experiment_id: uuid.UUID) -> list[ArmStats]:
    """Per-arm aggregates of the experiment's jobs (arms without jobs are absent)."""
    rows = session.execute(_ARM_STATS, {"experiment": experiment_id})
    return [ArmStats(*row) for row in rows]


_SHADOW_STATS = text(
    _JUDGED
    + """
    SELECT s.arm,
           count(*),
           count(*) FILTER (WHERE s.status = 'succeeded'),
           count(*) FILTER (WHERE s.status = 'failed'),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY s.predict_ms),
           percentile_cont(0.9) WITHIN GROUP (ORDER BY s.predict_ms),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY s.predict_ms),
           count(*) FILTER (WHERE compared),
           count(*) FILTER (WHERE compared AND agreed),
           count(*) FILTER (WHERE shadow_ok IS NOT NULL AND control_ok IS NOT NULL),
           count(*) FILTER (WHERE shadow_ok AND control_ok IS NOT NULL),
           count(*) FILTER (WHERE control_ok AND shadow_ok IS NOT NULL),
           count(*) FILTER (WHERE control_ok AND NOT shadow_ok),
           count(*) FILTER (WHERE shadow_ok AND NOT control_ok)
      FROM (SELECT s.*, s.status = 'succeeded' AND j.status = 'succeeded' AS compared,
                   COALESCE(s.output -> 'label' = j.output -> 'label', s.output = j.output)
                       AS agreed,
                   CASE WHEN s.status = 'succeeded' AND j.status = 'succeeded'
                        THEN j.label = j.output -> 'label' END AS control_ok,
                   CASE WHEN s.status = 'succeeded' AND j.status = 'succeeded'
                        THEN j.label = s.output -> 'label' END AS shadow_ok
              FROM shadow_results s JOIN judged j ON j.id = s.job_id
             WHERE s.experiment_id = :experiment) AS s
     GROUP BY s.arm
    """
)


def shadow_stats(session: Session, experiment_id: uuid.UUID) -> list[ShadowStats]:
    """Per-shadow-arm aggregates: runs, failures, latency, agreement and paired feedback."""
    rows = session.execute(_SHADOW_STATS, {"experiment": experiment_id})
    return [ShadowStats(*row) for row in rows]


def shadow_inputs(session: Session, job_ids: Sequence[uuid.UUID]) -> list[ShadowInput]:
    """The inputs of jobs a shadow arm should run (jobs that no longer exist are absent)."""
    from db.tables import Job

    rows = session.execute(
        select(Job.id, Job.input, Job.created_at).where(Job.id.in_(list(job_ids)))
    )
    return [ShadowInput(*row) for row in rows]


# The join with jobs gives each row its partition key and drops the rows of a job retention
# took since its input was read (its partition of shadow_results may be gone): retention
# detaches the partition of jobs only once this statement's transaction ends, and the one of
# shadow_results after it (db/partitions.py).
_STORE_SHADOW = text(
    """
    INSERT INTO shadow_results
           (job_id, job_created_at, version_id, experiment_id, arm, status, output, error,
            predict_ms, worker)
    SELECT r.job_id, j.created_at, r.version_id, r.experiment_id, r.arm, r.status, r.output,
           r.error, r.predict_ms, :worker
      FROM jsonb_to_recordset(CAST(:rows AS jsonb))
           AS r(job_id uuid, version_id int, experiment_id uuid, arm text, status text,
                output jsonb, error jsonb, predict_ms float8)
      JOIN jobs j ON j.id = r.job_id AND j.created_at BETWEEN :since AND :until
    ON CONFLICT (job_id, job_created_at, version_id) DO NOTHING
    """
)


def store_shadow_results(session: Session, rows: Sequence[dict[str, Any]], worker: str) -> int:
    """Insert shadow outputs in one statement; a redelivered shadow message adds nothing, nor
    does the output for a job that no longer exists."""
    if not rows:
        return 0
    payload = json.dumps(rows, default=str)
    since, until = time_window([str(row["job_id"]) for row in rows])
    result = session.execute(
        _STORE_SHADOW, {"rows": payload, "worker": worker, "since": since, "until": until}
    )
    return int(result.rowcount)  # type: ignore[attr-defined]
