"""``GET /v1/stats`` (operator): what the operator's page (``/dashboard``) shows, as JSON.

Computed from Postgres (the jobs themselves) and Redis (worker heartbeats) on request, so
every API node answers the same and nothing needs a Prometheus server. ``?window=S``
(60 s to a day, default 600) bounds what is counted; the timeline has about 40 points.
Answers are cached for a second per node and window: many open dashboards cost one query
set a second.
"""

from __future__ import annotations

import datetime as dt
import math
import time
from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.http.auth import require
from api.state import ApiState, TtlCache, app_cache, state
from db.experiments import list_experiments
from db.scaling import recent_decisions
from db.stats import (
    Bucket,
    Window,
    as_of,
    lane_counts,
    quality,
    recent_training_runs,
    recent_versions,
    timeline,
    window,
)
from db.training import run_dict
from inferq.core.errors import BadRequest
from inferq.core.settings import LANES
from inferq.domain.experiment_report import build_report, summary
from inferq.domain.fleet import per_lane, worker_beats

bp = Blueprint("stats", __name__, url_prefix="/v1/stats")

DEFAULT_WINDOW_S = 600
MIN_WINDOW_S, MAX_WINDOW_S = 60, 86_400
BUCKETS_S = (5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600)
CACHE_S = 1.0
EXPERIMENTS_SHOWN = 6
DECISIONS_READ = 50


@bp.get("")
@require("operator")
def show() -> Response:
    """Throughput, latency, queues, workers, cache, errors, quality, experiments, training
    runs and model versions."""
    window_s = _window_arg(request.args.get("window"))
    st = state()
    cache: TtlCache[int, dict[str, Any]] = app_cache("inferq.stats", CACHE_S)
    return jsonify(cache.get(window_s, lambda: build(st, window_s)))


def _window_arg(raw: str | None) -> int:
    if raw is None or raw == "":
        return DEFAULT_WINDOW_S
    if not raw.isdigit() or not MIN_WINDOW_S <= int(raw) <= MAX_WINDOW_S:
        raise BadRequest(f"window must be whole seconds from {MIN_WINDOW_S} to {MAX_WINDOW_S}.")
    return int(raw)


def bucket_for(window_s: int) -> int:
    """The smallest bucket that cuts ``window_s`` into at most 40 slices."""
    return next((b for b in BUCKETS_S if window_s / b <= 40), BUCKETS_S[-1])


def build(st: ApiState, window_s: int) -> dict[str, Any]:
    """The whole stats document."""
    bucket_s = bucket_for(window_s)
    with st.sessions() as session:
        recent = window(session, window_s)
        slices, ends = timeline(session, window_s, bucket_s), as_of(session)
        lanes = lane_counts(session)
        models = quality(session, st.settings.observability.quality_window_s)
        versions = recent_versions(session)
        runs = [run_dict(run, name) for run, name in recent_training_runs(session)]
        pools = _pools(recent_decisions(session, DECISIONS_READ))
        experiments = [
            build_report(session, row, name).to_dict()
            if row.status == "running"
            else summary(row, name)
            for row, name in list_experiments(session, limit=EXPERIMENTS_SHOWN)
        ]
    beats = worker_beats(st.redis, st.settings)
    now = time.time()
    return {
        "generated_at": dt.datetime.fromtimestamp(now, dt.timezone.utc).isoformat(),
        "window_s": window_s,
        "jobs": _jobs(recent),
        "latency_ms": _ms(recent.latency_p50, recent.latency_p95, recent.latency_p99),
        "queue_wait_ms": _ms(recent.queue_wait_p50, recent.queue_wait_p95),
        "predict_ms_p50": _round(recent.predict_p50),
        "lanes": _lanes(lanes, per_lane(beats, LANES)),
        "workers": {
            "live": len(beats),
            "consuming": sum(1 for beat in beats if beat.consuming),
            # What the autoscaler wants, over its pools (None: no autoscaler decided yet).
            "desired": sum(p["desired"] for p in pools) if pools else None,
            "pools": pools,
            "list": [beat.to_dict(now) for beat in beats],
        },
        "timeline": {"bucket_s": bucket_s, "points": _points(slices, ends, window_s, bucket_s)},
        "quality": [
            {
                "model": q.model,
                "version": q.version,
                "holdout_accuracy": _round(q.holdout_accuracy),
                "judged": q.judged,
                "accuracy": _round(q.accuracy),
            }
            for q in models
        ],
        "experiments": experiments,
        "training_runs": runs,
        "recent_versions": [
            {
                "model": v.model,
                "version": v.version,
                "status": v.status,
                "metrics": v.metrics,
                "created_by": v.created_by,
                "created_at": v.created_at.isoformat(),
            }
            for v in versions
        ],
    }


def _pools(decisions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Each autoscaler pool's latest decision: workers current and desired."""
    latest: dict[str, dict[str, Any]] = {}
    for d in decisions:  # newest first
        latest.setdefault(
            d["pool"],
            {k: d[k] for k in ("pool", "backend", "current", "desired", "direction", "at")},
        )
    return list(latest.values())


def _jobs(recent: Window) -> dict[str, Any]:
    judged = recent.succeeded + recent.failed
    return {
        "finished": recent.finished,
        "succeeded": recent.succeeded,
        "failed": recent.failed,
        "canceled": recent.canceled,
        "cached": recent.cached,
        "throughput_per_s": round(recent.finished / recent.window_s, 4),
        "error_rate": round(recent.failed / judged, 4) if judged else None,
        "cache_hit_ratio": round(recent.cached / recent.finished, 4) if recent.finished else None,
    }


def _lanes(counts: list[Any], workers: dict[str, tuple[int, int]]) -> list[dict[str, Any]]:
    by_lane = {c.lane: c for c in counts}
    rows = []
    for lane in LANES:
        count = by_lane.get(lane)
        consuming, stalled = workers.get(lane, (0, 0))
        rows.append(
            {
                "lane": lane,
                "queued": count.queued if count else 0,
                "running": count.running if count else 0,
                "oldest_queued_s": round(count.oldest_queued_s, 1) if count else 0.0,
                "workers": consuming,
                "workers_stalled": stalled,
            }
        )
    return rows


def _points(slices: list[Bucket], now: float, window_s: int, bucket_s: int) -> list[dict[str, Any]]:
    """One point per bucket over the window, empty buckets included (charts stay even)."""
    by_start = {int(b.start.timestamp()): b for b in slices}
    first = math.floor((now - window_s) / bucket_s) * bucket_s
    points = []
    for start in range(first, int(now) + 1, bucket_s):
        b = by_start.get(start)
        points.append(
            {
                "t": dt.datetime.fromtimestamp(start, dt.timezone.utc).isoformat(),
                "finished": b.finished if b else 0,
                "failed": b.failed if b else 0,
                "cached": b.cached if b else 0,
                "per_s": round((b.finished if b else 0) / bucket_s, 4),
                **_ms(*(b.latency_p50, b.latency_p95, b.latency_p99) if b else (None,) * 3),
            }
        )
    return points


def _ms(*values: float | None) -> dict[str, float | None]:
    names = ("p50", "p95", "p99")
    return {name: _round(value, 2) for name, value in zip(names, values, strict=False)}


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)
