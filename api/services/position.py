"""Where is my job: its place in the lane, when it should finish, and why it might not.

``eta_s`` is the expected number of seconds until the job's result: the worker time of the
jobs queued ahead of it, of itself, and of half of those running (on average half done),
shared by the lane's consuming workers. A job's worker time is its model's, measured over
that model's latest jobs in the lane (a batch's time shared by its jobs, so batching under a
backlog shows); a model not run lately counts at the lane's average.

Without a consuming worker there is no ETA, and ``stuck`` says why: no live worker for the
lane, or workers that stopped consuming. A running job whose worker stopped beating, or
that runs past the time limit, is ``stuck`` too (the reconciler puts it back in the queue).

Lane and model figures are cached per API process for a second (longer when they took long
to read: see ``LANE_BUSY_SHARE``). The jobs ahead are counted for each request, in the
statement that reads the job where the route asks for them (``JobView.ahead``), up to
``db.jobs.AHEAD_COUNTED_UP_TO`` of them: ``position_exact`` says whether ``position`` is that
count. Deeper in a backlog the position is estimated from the
lane's figures (its queued jobs and when the oldest and the newest of them came, as if they
arrived evenly in between), so polling a job behind a hundred thousand others costs what
polling one behind a thousand does.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

from api.state import ApiState, TtlCache, app_cache
from db import jobs as job_rows
from db.jobs import JobView
from db.stats import ahead_by_model, lane_counts, seconds_per_job
from inferq.domain.fleet import worker_beats

LANE_CACHE_S = 1.0
#: Lane figures count the lane's open jobs and read its latest finished ones: over a deep
#: backlog that takes a while (0.2 s with 100,000 queued), and they are then re-read less
#: often, so that reading them takes at most this share of an API process's time. (A
#: model's time per job is one bounded read, kept for LANE_CACHE_S only: kept longer, a
#: model with no figure yet, its first jobs still running, went on borrowing the lane's for
#: as long as a slow read had made it keep the miss.)
LANE_BUSY_SHARE = 0.02


@dataclasses.dataclass(frozen=True)
class Lane:
    """How one lane is being served right now."""

    consuming: int
    stalled: int
    running: int
    #: worker seconds per job over the lane's latest jobs, None when none ran lately
    per_job_s: float | None
    live: frozenset[str]
    #: queued jobs of the lane, and when the oldest of them and the newest were created (as
    #: Unix seconds; None when none is queued)
    queued: int = 0
    oldest_queued_at: float | None = None
    newest_queued_at: float | None = None


def _cache(name: str, busy_share: float | None = LANE_BUSY_SHARE) -> TtlCache[Any, Any]:
    return app_cache(name, LANE_CACHE_S, busy_share=busy_share)


def lane(st: ApiState, name: str) -> Lane:
    """The lane's workers, running jobs and time per job (cached for a second)."""
    found = _cache("inferq.lanes").get(name, lambda: _measure(st, name))
    assert found is not None
    return found


def _measure(st: ApiState, name: str) -> Lane:
    beats = worker_beats(st.redis, st.settings)
    mine = [beat for beat in beats if name in beat.lanes]
    consuming = sum(1 for beat in mine if beat.consuming)
    with st.sessions() as session:
        counts = next((c for c in lane_counts(session) if c.lane == name), None)
        per_job = seconds_per_job(session, name)
    measured_at = time.time()
    queued = counts.queued if counts else 0
    oldest = measured_at - counts.oldest_queued_s if counts and queued else None
    newest = measured_at - counts.newest_queued_s if counts and queued else None
    return Lane(
        consuming,
        len(mine) - consuming,
        counts.running if counts else 0,
        per_job,
        frozenset(b.name for b in beats),
        queued,
        oldest,
        newest,
    )


def model_seconds(st: ApiState, name: str, model_id: int) -> float | None:
    """Worker seconds per job of one model in the lane (cached for a second; misses too)."""

    def measure() -> tuple[float | None]:
        with st.sessions() as session:
            return (seconds_per_job(session, name, model_id),)

    found = _cache("inferq.models_per_job", busy_share=None).get((name, model_id), measure)
    return found[0] if found else None


def locate(st: ApiState, view: JobView) -> dict[str, Any]:
    """The fields that say where an open job is: ``position``, ``eta_s`` (queued) and
    ``stuck`` (queued or running; None when nothing is wrong). Empty for finished jobs."""
    job = view.job
    if job.status not in ("queued", "running"):
        return {}
    now = lane(st, job.lane)
    if job.status == "running":
        return {"stuck": _running_stuck(st, view, now)}
    ahead = view.ahead
    if ahead is None:  # not read with the job
        with st.sessions() as session:
            ahead = ahead_by_model(session, job.lane, job.created_at)
    counted = sum(ahead.values())
    exact = counted < job_rows.AHEAD_COUNTED_UP_TO
    position = counted if exact else estimate_ahead(now, job.created_at.timestamp(), counted)
    # Past the count, the nearest jobs' mix of models stands for all of those ahead.
    scale = position / counted if counted else 1.0
    eta = None
    if now.consuming and now.per_job_s:
        lane_s = now.per_job_s

        def cost(model_id: int) -> float:
            return model_seconds(st, job.lane, model_id) or lane_s

        work = scale * sum(n * cost(m) for m, n in ahead.items()) + cost(job.model_id)
        eta = round((work + now.running * lane_s / 2) / now.consuming, 3)
    return {
        "position": position,
        "position_exact": exact,
        "eta_s": eta,
        "stuck": _queued_stuck(job.lane, now),
    }


def estimate_ahead(now: Lane, created_at: float, counted: int) -> int:
    """The jobs queued ahead of one created at ``created_at`` (Unix seconds) when the count
    stopped at ``counted``: the lane's queued jobs in proportion to how far into the time
    from the oldest to the newest of them it was created, never fewer than counted nor more
    than the others queued."""
    if now.oldest_queued_at is None or now.newest_queued_at is None or now.queued <= counted:
        return counted
    span = now.newest_queued_at - now.oldest_queued_at
    share = (created_at - now.oldest_queued_at) / span if span > 0 else 1.0
    return min(max(round(now.queued * share), counted), now.queued - 1)


def _queued_stuck(name: str, now: Lane) -> dict[str, str] | None:
    if now.consuming:
        return None
    if now.stalled:
        return {
            "reason": "workers-not-consuming",
            "detail": f"{now.stalled} live worker(s) of lane {name!r} stopped taking jobs; "
            "they exit and are replaced, and the job waits in the queue meanwhile.",
        }
    return {
        "reason": "no-live-worker",
        "detail": f"No live worker consumes lane {name!r}; the job waits in the queue "
        "until one starts.",
    }


def _running_stuck(st: ApiState, view: JobView, now: Lane) -> dict[str, str] | None:
    job = view.job
    if job.worker and job.worker not in now.live:
        return {
            "reason": "worker-lost",
            "detail": f"Its worker {job.worker!r} stopped beating; the reconciler puts the "
            "job back in the queue for another worker.",
        }
    limit = st.settings.scheduler.job_time_limit_s
    if job.started_at is not None and time.time() - job.started_at.timestamp() > limit:
        return {
            "reason": "over-time-limit",
            "detail": f"It has run for more than {limit:g} s; the reconciler puts it back "
            "in the queue for another worker.",
        }
    return None
