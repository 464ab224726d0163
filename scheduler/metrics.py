"""The scheduler's metrics: what the reconciler did, and the state of the whole system.

The scheduler runs exactly once per deployment, so it is where system-wide gauges come
from (one series each, not one per API node): queue depth, running jobs and the oldest
queued job's age per lane (Postgres), live and stalled workers per lane (heartbeats in
Redis), whether Postgres, Redis and the broker answer, and each model's live accuracy from
feedback. A thread measures every ``INFERQ_METRICS_INTERVAL_S``; model quality, which
reads the feedback of the last ``INFERQ_QUALITY_WINDOW_S``, every fourth time.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable

from celery import Celery

from db.experiments import running_ids
from db.stats import Quality, lane_counts, ping, quality
from inferq.core.metrics import SchedulerMetrics, serve, with_process_metrics
from inferq.core.settings import LANES, Settings
from inferq.domain.fleet import per_lane, worker_beats
from scheduler.reconciler import Reconciler, ReconcileReport

log = logging.getLogger(__name__)

QUALITY_EVERY = 4
DEPENDENCIES = ("database", "redis", "broker")


@dataclasses.dataclass
class Observer:
    """Measures the system for the scheduler's registry."""

    reconciler: Reconciler
    metrics: SchedulerMetrics = dataclasses.field(default_factory=SchedulerMetrics)
    passes: int = 0

    @property
    def settings(self) -> Settings:
        """The scheduler's settings."""
        return self.reconciler.settings

    def reconciled(self, report: ReconcileReport | None) -> None:
        """Count one reconciler pass: what it did, or that it failed (None)."""
        if report is None:
            self.metrics.passes.labels("error").inc()
            return
        self.metrics.passes.labels("ok").inc()
        for action in ("requeued", "republished", "expired"):
            self.metrics.reconciled.labels(action).inc(getattr(report, action))

    def collect(self) -> None:
        """One measuring pass; what cannot be reached is reported as down, never raised."""
        up = {
            "database": _probe(self._database),
            "redis": _probe(self._redis),
            "broker": _probe(lambda: broker_ping(self.reconciler.app, self.settings)),
        }
        for name, ok in up.items():
            self.metrics.dependency_up.labels(name).set(1 if ok else 0)
        if up["redis"]:
            self._workers()
        if up["database"]:
            self._database_gauges(with_quality=self.passes % QUALITY_EVERY == 0)
        self.passes += 1
        self.metrics.last_collect.set_to_current_time()

    def _database(self) -> None:
        with self.reconciler.sessions() as session:
            ping(session)

    def _redis(self) -> None:
        self.reconciler.redis.ping()

    def _workers(self) -> None:
        counts = per_lane(worker_beats(self.reconciler.redis, self.settings), LANES)
        for lane, (consuming, stalled) in counts.items():
            self.metrics.workers_live.labels(lane).set(consuming)
            self.metrics.workers_stalled.labels(lane).set(stalled)

    def _database_gauges(self, with_quality: bool) -> None:
        with self.reconciler.sessions() as session:
            counts = {c.lane: c for c in lane_counts(session)}
            experiments = len(running_ids(session))
            models = (
                quality(session, self.settings.observability.quality_window_s)
                if with_quality
                else None
            )
        for lane in LANES:
            count = counts.get(lane)
            self.metrics.queue_depth.labels(lane).set(count.queued if count else 0)
            self.metrics.running.labels(lane).set(count.running if count else 0)
            self.metrics.oldest_age.labels(lane).set(count.oldest_queued_s if count else 0)
        self.metrics.experiments_running.set(experiments)
        if models is not None:
            self._quality(models)

    def _quality(self, models: list[Quality]) -> None:
        # A promoted version replaces its model's series: clear, then set what is active.
        m = self.metrics
        for gauge in (m.feedback_accuracy, m.feedback_judged, m.holdout_accuracy):
            gauge.clear()
        for q in models:
            labels = (q.model, str(q.version))
            m.feedback_judged.labels(*labels).set(q.judged)
            if q.accuracy is not None:
                m.feedback_accuracy.labels(*labels).set(q.accuracy)
            if q.holdout_accuracy is not None:
                m.holdout_accuracy.labels(*labels).set(q.holdout_accuracy)


def broker_ping(app: Celery, settings: Settings) -> None:
    """Connect to the broker once, within the publish timeout (raises when it is down)."""
    with app.connection_for_write() as connection:
        connection.ensure_connection(max_retries=1, timeout=settings.api.publish_timeout_s)


def _probe(check: Callable[[], None]) -> bool:
    try:
        check()
    except Exception:
        return False
    return True


def collect_forever(observer: Observer, interval_s: float, stop: threading.Event) -> None:
    """Measure now and every ``interval_s`` until ``stop``; a failed pass is logged."""
    while True:
        try:
            observer.collect()
        except Exception:
            log.exception("metrics pass failed")
        if stop.wait(interval_s):
            return


def start(reconciler: Reconciler, stop: threading.Event) -> Observer:
    """Serve the scheduler's metrics and measure in a daemon thread."""
    observer = Observer(reconciler)
    settings = reconciler.settings
    with_process_metrics(observer.metrics.registry)
    serve(
        observer.metrics.registry,
        settings.observability.metrics_host,
        settings.observability.metrics_port,
    )
    threading.Thread(
        target=collect_forever,
        args=(observer, settings.observability.metrics_interval_s, stop),
        name="inferq-metrics",
        daemon=True,
    ).start()
    return observer
