"""The scheduler process: Celery beat for periodic tasks, and beside it the reconciler loop,
the experiment checks, retraining rollouts, retention and the vacuum autovacuum does not do."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from db.engine import make_engine, make_session_factory
from inferq.core import connections
from inferq.core.broker import make_celery
from inferq.core.settings import Settings
from inferq.core.status import make_redis
from scheduler import metrics, retention, retraining, vacuum
from scheduler.experiment_checks import judge_forever
from scheduler.reconciler import Reconciler, ReconcileReport, broker_redis

log = logging.getLogger(__name__)


def reconcile_forever(
    reconciler: Reconciler,
    interval_s: float,
    stop: threading.Event,
    observe: Callable[[ReconcileReport | None], None] = lambda report: None,
) -> None:
    """Run reconciler passes every ``interval_s`` until ``stop``; a failed pass is logged.

    ``observe`` gets each pass's report, or None for a pass that failed (metrics).
    """
    while not stop.wait(interval_s):
        try:
            report = reconciler.run_once()
        except Exception:
            log.exception("reconciler pass failed")
            observe(None)
        else:
            observe(report)


def make_reconciler(settings: Settings) -> Reconciler:
    """A reconciler on the configured database, Redis and broker."""
    pool = connections.pool(settings, "scheduler")
    engine = make_engine(
        settings.require_database_url(),
        pool_size=pool.size,
        max_overflow=pool.overflow,
        application_name="inferq-scheduler",
    )
    return Reconciler(
        settings,
        make_session_factory(engine),
        make_redis(settings),
        make_celery(settings),
        broker=broker_redis(settings),
    )


def run_scheduler(settings: Settings) -> None:
    """Run beat in the foreground with the reconciler in a daemon thread."""
    reconciler = make_reconciler(settings)
    stop = threading.Event()
    observer = metrics.start(reconciler, stop)
    thread = threading.Thread(
        target=reconcile_forever,
        args=(reconciler, settings.scheduler.reconcile_interval_s, stop, observer.reconciled),
        name="inferq-reconciler",
        daemon=True,
    )
    thread.start()
    # Experiment decisions run here, beside the reconciler, never in a worker.
    threading.Thread(
        target=judge_forever,
        args=(reconciler.sessions, settings.scheduler.experiment_interval_s, stop),
        name="inferq-experiments",
        daemon=True,
    ).start()
    # Rollouts of trained candidates and drift checks, beside the experiment checks.
    threading.Thread(
        target=retraining.retrain_forever,
        args=(reconciler.sessions, settings, reconciler.app, stop),
        name="inferq-retraining",
        daemon=True,
    ).start()
    # Retention: partitions ahead of now, expired ones dropped.
    threading.Thread(
        target=retention.retain_forever,
        args=(reconciler.sessions, settings, stop),
        name="inferq-retention",
        daemon=True,
    ).start()
    # Vacuum where autovacuum does not run (scheduler/vacuum.py).
    threading.Thread(
        target=vacuum.vacuum_forever,
        args=(reconciler.sessions.kw["bind"], settings.scheduler.vacuum_interval_s, stop),
        name="inferq-vacuum",
        daemon=True,
    ).start()
    reconciler.app.conf.beat_schedule = retraining.beat_schedule(settings)
    # Only one beat sends the schedule; a second scheduler waits here, its threads running.
    retraining.hold_beat_lock(retraining.BeatLock(make_redis(settings), settings), stop)
    settings.home.mkdir(parents=True, exist_ok=True)
    beat = reconciler.app.Beat(
        loglevel=settings.log_level,
        schedule=str(settings.home / "beat-schedule"),
    )
    try:
        beat.run()
    finally:
        stop.set()
