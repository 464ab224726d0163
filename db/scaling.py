"""What the autoscaler reads from Postgres (lane activity, busy workers) and writes (its
decisions), and what ``GET /v1/scaling`` reads back.

Every query walks an index: open jobs through ``ix_jobs_open``, finished ones through
``ix_jobs_completed_at`` bounded by the window, decisions through ``(pool, at)``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from db.tables import ScalingDecision


@dataclasses.dataclass(frozen=True)
class LaneActivity:
    """One lane over the last ``window_s`` seconds, and its open jobs now."""

    lane: str
    queued: int
    running: int
    arrived: int
    completed: int
    #: Worker-seconds spent on the completed jobs (a batch's time shared by its jobs).
    busy_s: float


_OPEN = text(
    """
    SELECT lane,
           count(*) FILTER (WHERE status = 'queued'),
           count(*) FILTER (WHERE status = 'running'),
           count(*) FILTER (WHERE created_at > clock_timestamp() - make_interval(secs => :w))
      FROM jobs
     WHERE status IN ('queued', 'running') AND lane = ANY(:lanes)
     GROUP BY lane
    """
)

_DONE = text(
    """
    SELECT lane,
           count(*) FILTER (WHERE created_at > clock_timestamp() - make_interval(secs => :w)),
           count(*) FILTER (WHERE started_at IS NOT NULL AND NOT cached),
           COALESCE(sum(extract(epoch FROM completed_at - started_at) / GREATEST(batch_size, 1))
                    FILTER (WHERE started_at IS NOT NULL AND NOT cached), 0)
      FROM jobs
     WHERE completed_at > clock_timestamp() - make_interval(secs => :w) AND lane = ANY(:lanes)
     GROUP BY lane
    """
)


def lane_activity(session: Session, lanes: Sequence[str], window_s: float) -> list[LaneActivity]:
    """Queued, running, arrived and completed jobs of each of ``lanes`` (all listed)."""
    params = {"w": float(window_s), "lanes": list(lanes)}
    open_ = {row[0]: row[1:] for row in session.execute(_OPEN, params)}
    done = {row[0]: row[1:] for row in session.execute(_DONE, params)}
    out = []
    for lane in lanes:
        queued, running, new_open = open_.get(lane, (0, 0, 0))
        new_done, completed, busy = done.get(lane, (0, 0, 0.0))
        out.append(
            LaneActivity(
                lane,
                int(queued),
                int(running),
                int(new_open) + int(new_done),
                int(completed),
                float(busy),
            )
        )
    return out


def busy_workers(session: Session, lanes: Sequence[str]) -> set[str]:
    """Identities of the workers running a job of ``lanes`` now."""
    rows = session.execute(
        text(
            "SELECT DISTINCT worker FROM jobs"
            " WHERE status = 'running' AND worker IS NOT NULL AND lane = ANY(:lanes)"
        ),
        {"lanes": list(lanes)},
    )
    return {row[0] for row in rows}


def record_decision(
    session: Session,
    *,
    pool: str,
    backend: str,
    current: int,
    desired: int,
    direction: str,
    reason: str,
    inputs: dict[str, Any],
) -> None:
    """Store one decision (the caller commits)."""
    session.add(
        ScalingDecision(
            pool=pool,
            backend=backend,
            current=current,
            desired=desired,
            direction=direction,
            reason=reason,
            inputs=inputs,
        )
    )


def recent_decisions(
    session: Session, limit: int = 20, pool: str | None = None
) -> list[dict[str, Any]]:
    """The latest decisions, newest first, as JSON-ready dicts."""
    query = select(ScalingDecision).order_by(ScalingDecision.at.desc(), ScalingDecision.id.desc())
    if pool is not None:
        query = query.where(ScalingDecision.pool == pool)
    return [
        {
            "at": row.at.isoformat(),
            "pool": row.pool,
            "backend": row.backend,
            "current": row.current,
            "desired": row.desired,
            "direction": row.direction,
            "reason": row.reason,
            "inputs": row.inputs,
        }
        for row in session.scalars(query.limit(limit))
    ]
