"""Read-only aggregates for operators: lanes, recent throughput and latency, service time,
model quality from feedback. Used by the API's stats endpoint, its ETA estimates and the
scheduler's Prometheus gauges.

Every query walks an index: open jobs through ``ix_jobs_open`` (queued and running only),
finished ones through ``ix_jobs_completed_at`` bounded by a time window. The window and the
timeline are bounded by ``now()`` (the transaction's start) so that, read in one session, they
count the same jobs.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from db import jobs as job_rows
from db.tables import Model, TrainingRun


@dataclasses.dataclass(frozen=True)
class LaneCount:
    """Open jobs of one lane."""

    lane: str
    queued: int
    running: int
    #: seconds the oldest queued job has waited (0 when none waits)
    oldest_queued_s: float
    #: seconds since the newest queued job was created (0 when none waits)
    newest_queued_s: float = 0.0


_LANES = text(
    """
    SELECT lane,
           count(*) FILTER (WHERE status = 'queued'),
           count(*) FILTER (WHERE status = 'running'),
           COALESCE(extract(epoch FROM clock_timestamp()
                                       - min(created_at) FILTER (WHERE status = 'queued')), 0),
           COALESCE(extract(epoch FROM clock_timestamp()
                                       - max(created_at) FILTER (WHERE status = 'queued')), 0)
      FROM jobs
     WHERE status IN ('queued', 'running')
     GROUP BY lane
    """
)


def lane_counts(session: Session) -> list[LaneCount]:
    """Queued and running jobs per lane (lanes with no open job are absent)."""
    return [
        LaneCount(row[0], int(row[1]), int(row[2]), float(row[3]), float(row[4]))
        for row in session.execute(_LANES)
    ]


@dataclasses.dataclass(frozen=True)
class Window:
    """Jobs that finished within the last ``window_s`` seconds."""

    window_s: float
    finished: int
    succeeded: int
    failed: int
    canceled: int
    cached: int
    #: submit to result (ms) of succeeded jobs that a worker ran
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None
    #: submit to claim (ms)
    queue_wait_p50: float | None
    queue_wait_p95: float | None
    predict_p50: float | None


_WINDOW = text(
    """
    SELECT count(*),
           count(*) FILTER (WHERE status = 'succeeded'),
           count(*) FILTER (WHERE status = 'failed'),
           count(*) FILTER (WHERE status = 'canceled'),
           count(*) FILTER (WHERE cached),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY latency) FILTER (WHERE ran),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY latency) FILTER (WHERE ran),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY latency) FILTER (WHERE ran),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY wait) FILTER (WHERE ran),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY wait) FILTER (WHERE ran),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY predict_ms) FILTER (WHERE ran)
      FROM (SELECT status, cached, predict_ms,
                   status = 'succeeded' AND NOT cached AS ran,
                   extract(epoch FROM completed_at - created_at) * 1000 AS latency,
                   extract(epoch FROM started_at - created_at) * 1000 AS wait
              FROM jobs
             WHERE completed_at > now() - make_interval(secs => :window)) AS f
    """
)


def window(session: Session, window_s: float) -> Window:
    """Counts and percentiles of the jobs finished in the last ``window_s`` seconds."""
    row = session.execute(_WINDOW, {"window": window_s}).one()
    counts = [int(v) for v in row[:5]]
    rest = [None if v is None else float(v) for v in row[5:]]
    return Window(window_s, *counts, *rest)


@dataclasses.dataclass(frozen=True)
class Bucket:
    """The jobs that finished within one slice of time."""

    start: dt.datetime
    finished: int
    failed: int
    cached: int
    latency_p50: float | None
    latency_p95: float | None
    latency_p99: float | None


_TIMELINE = text(
    """
    SELECT date_bin(make_interval(secs => :bucket), completed_at, TIMESTAMPTZ 'epoch') AS start,
           count(*),
           count(*) FILTER (WHERE status = 'failed'),
           count(*) FILTER (WHERE cached),
           percentile_cont(0.5) WITHIN GROUP (ORDER BY latency) FILTER (WHERE ran),
           percentile_cont(0.95) WITHIN GROUP (ORDER BY latency) FILTER (WHERE ran),
           percentile_cont(0.99) WITHIN GROUP (ORDER BY latency) FILTER (WHERE ran)
      FROM (SELECT status, cached, completed_at,
                   status = 'succeeded' AND NOT cached AS ran,
                   extract(epoch FROM completed_at - created_at) * 1000 AS latency
              FROM jobs
             WHERE completed_at > now() - make_interval(secs => :window)) AS f
     GROUP BY 1
     ORDER BY 1
    """
)


def as_of(session: Session) -> float:
    """The transaction's ``now()`` in epoch seconds: the instant windows and timelines read in
    this session end at (a clock read after the queries could start the timeline a bucket
    later than the counts, and drop that bucket's jobs)."""
    return float(session.scalar(text("SELECT extract(epoch FROM now())")))


def timeline(session: Session, window_s: float, bucket_s: float) -> list[Bucket]:
    """Finished jobs per ``bucket_s`` slice over the last ``window_s`` (empty slices absent)."""
    rows = session.execute(_TIMELINE, {"window": window_s, "bucket": bucket_s})
    return [
        Bucket(row[0], int(row[1]), int(row[2]), int(row[3]), *_floats(row[4:])) for row in rows
    ]


def _floats(values: Any) -> list[float | None]:
    return [None if v is None else float(v) for v in values]


def ahead_by_model(session: Session, lane: str, created_at: dt.datetime) -> dict[int, int]:
    """Queued jobs of ``lane`` created before ``created_at``, the nearest
    ``db.jobs.AHEAD_COUNTED_UP_TO`` of them, counted per model id (as JobView.ahead)."""
    counts = session.scalar(
        text("SELECT inferq_jobs_ahead(:lane, :created, :cap)"),
        {"lane": lane, "created": created_at, "cap": job_rows.AHEAD_COUNTED_UP_TO},
    )
    return {int(model): int(n) for model, n in (counts or {}).items()}


# The latest finished jobs, newest first, through ix_jobs_completed_at: at most :scan of
# them are looked at, so the cost does not grow with the jobs of the last hour. (The cutoff
# is a parameter: a condition on clock_timestamp(), which is volatile, cannot use the index,
# and every call read the whole table.)
_SERVICE = text(
    """
    SELECT count(*),
           COALESCE(sum(extract(epoch FROM completed_at - started_at) / GREATEST(batch_size, 1)), 0)
      FROM (SELECT completed_at, started_at, batch_size
              FROM (SELECT completed_at, started_at, batch_size, lane, model_id, cached, status
                      FROM jobs
                     WHERE completed_at > :since
                     ORDER BY completed_at DESC
                     LIMIT :scan) AS latest
             WHERE lane = :lane AND (CAST(:model AS int) IS NULL OR model_id = :model)
               AND NOT cached AND status = 'succeeded' AND started_at IS NOT NULL
             ORDER BY completed_at DESC
             LIMIT :sample) AS s
    """
)


def seconds_per_job(
    session: Session,
    lane: str,
    model_id: int | None = None,
    horizon_s: float = 3600.0,
    sample: int = 30,
    scan: int = 5000,
) -> float | None:
    """Worker time per job over the last ``sample`` jobs of ``lane`` (of one model, if
    given) that a worker ran within ``horizon_s``, among the latest ``scan`` jobs that
    finished; a batch's time is shared by its jobs. None when there are none (a lane or a
    model that ran too rarely lately to be among them has no figure: its ETA falls back to
    the lane's, or there is none)."""
    since = dt.datetime.now(dt.timezone.utc) - dt.timedelta(seconds=horizon_s)
    params = {"lane": lane, "model": model_id, "since": since, "sample": sample, "scan": scan}
    count, busy = session.execute(_SERVICE, params).one()
    return float(busy) / int(count) if count and busy > 0 else None


@dataclasses.dataclass(frozen=True)
class Quality:
    """The active version of a model: its holdout accuracy and what recent feedback says."""

    model: str
    version: int
    holdout_accuracy: float | None
    judged: int
    correct: int

    @property
    def accuracy(self) -> float | None:
        """Share of judged jobs whose output the feedback agrees with (None without any)."""
        return self.correct / self.judged if self.judged else None


# A job's latest feedback counts, as in experiment reports (db.experiments): a label is
# compared with the output's label, otherwise the `correct` verdict stands.
_QUALITY = text(
    """
    WITH latest AS (
        SELECT DISTINCT ON (job_id) job_id, label, correct
          FROM feedback
         WHERE created_at > clock_timestamp() - make_interval(secs => :window)
         ORDER BY job_id, created_at DESC, id
    ),
    judged AS (
        SELECT j.version_id,
               CASE WHEN l.label IS NOT NULL AND j.output -> 'label' IS NOT NULL
                    THEN l.label = j.output -> 'label'
                    ELSE l.correct END AS ok
          FROM latest l JOIN jobs j ON j.id = l.job_id
         WHERE j.status = 'succeeded'
    )
    SELECT m.name, v.version,
           CASE WHEN jsonb_typeof(v.metrics -> 'holdout_accuracy') = 'number'
                THEN (v.metrics ->> 'holdout_accuracy')::float8 END,
           count(judged.ok),
           count(*) FILTER (WHERE judged.ok)
      FROM models m
      JOIN model_versions v ON v.id = m.active_version_id
      LEFT JOIN judged ON judged.version_id = v.id
     GROUP BY 1, 2, 3
     ORDER BY 1
    """
)


def quality(session: Session, window_s: float) -> list[Quality]:
    """Each model's active version with its feedback of the last ``window_s`` seconds."""
    return [
        Quality(row[0], int(row[1]), row[2], int(row[3]), int(row[4]))
        for row in session.execute(_QUALITY, {"window": window_s})
    ]


@dataclasses.dataclass(frozen=True)
class RecentVersion:
    """A trained model version, newest first: what training produced lately."""

    model: str
    version: int
    status: str
    metrics: dict[str, Any]
    created_by: str
    created_at: dt.datetime


_VERSIONS = text(
    """
    SELECT m.name, v.version, v.status, v.metrics, v.created_by, v.created_at
      FROM model_versions v JOIN models m ON m.id = v.model_id
     ORDER BY v.created_at DESC, v.id DESC
     LIMIT :limit
    """
)


def recent_versions(session: Session, limit: int = 10) -> list[RecentVersion]:
    """The newest model versions (each one a finished training run)."""
    return [RecentVersion(*row) for row in session.execute(_VERSIONS, {"limit": limit})]


def recent_training_runs(session: Session, limit: int = 10) -> list[tuple[TrainingRun, str]]:
    """The newest training runs with their model's name, whatever their status."""
    rows = session.execute(
        select(TrainingRun, Model.name)
        .join(Model, Model.id == TrainingRun.model_id)
        .order_by(TrainingRun.created_at.desc())
        .limit(limit)
    )
    return [(row[0], row[1]) for row in rows]


def ping(session: Session) -> None:
    """A round trip to the database (raises when it does not answer)."""
    session.execute(text("SELECT 1"))
