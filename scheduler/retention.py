"""Retention: jobs older than ``INFERQ_JOB_RETENTION`` go a whole partition at a time.

Each pass (every ``INFERQ_RETENTION_INTERVAL_S``, in the scheduler) makes partitions ahead
of now, then drops the partitions wholly older than the retention cutoff — but none a batch
not yet expired still has items in (a batch's results stay readable until the batch is as
old as the retention, counted from its completion). Before a partition goes, its labelled
jobs are kept as training examples (the newest ``TRAINING_WINDOW`` a model's retraining
reads, no more), so retraining learns from all the feedback it would have seen.
Dropping a partition is O(1): ``jobs`` and the tables that hang off it (feedback, webhooks
and their deliveries, shadow results) lose the span's partitions whole, with no row-by-row
delete, no bloat, no long lock. Idempotency keys, a table that cannot be partitioned (see
``db.partitions``), are deleted once expired or once their job is gone.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import threading

from sqlalchemy import text
from sqlalchemy.exc import DBAPIError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from db import partitions as repo
from db.idempotency import purge_keys
from db.training import TRAINING_WINDOW
from inferq.core.settings import Settings

log = logging.getLogger(__name__)

#: Items of a batch may be stamped by an API clock slightly behind the database's.
CLOCK_SLACK = dt.timedelta(minutes=1)


@dataclasses.dataclass
class RetentionReport:
    """What one pass did."""

    made: list[str] = dataclasses.field(default_factory=list)
    dropped: list[str] = dataclasses.field(default_factory=list)
    #: The dependents' partitions dropped with (or a pass after) those of ``jobs``.
    dropped_dependents: list[str] = dataclasses.field(default_factory=list)
    kept_examples: int = 0
    trimmed_examples: int = 0
    deleted_idempotency_keys: int = 0
    deleted_batches: int = 0
    horizon: dt.datetime | None = None
    held_by_batch: bool = False


def enforce(sessions: sessionmaker[Session], settings: Settings) -> RetentionReport:
    """One retention pass; safe to run from several schedulers at once."""
    scheduler = settings.scheduler
    width = dt.timedelta(seconds=scheduler.job_partition_s)
    report = RetentionReport()
    with sessions.begin() as session:
        if not repo.lock_retention(session):
            return report  # another scheduler is at it
        now = session.scalar(text("SELECT now()"))
        try:
            with session.begin_nested():
                report.made = repo.ensure_ahead(session, width, scheduler.partitions_ahead, now)
        except OperationalError:  # lock_timeout: jobs is busy; partitions ahead wait a pass
            log.warning("could not attach a partition in time; next pass")
        cutoff = now - dt.timedelta(seconds=scheduler.job_retention_s)
        hold = repo.batch_hold(session, cutoff)
        limit = cutoff if hold is None else min(cutoff, hold - CLOCK_SLACK)
        report.held_by_batch = hold is not None and hold - CLOCK_SLACK < cutoff
        expired = repo.expired_spans(session, limit)
    for lower, upper in expired:
        if not _retire(sessions, lower, upper, report):
            break  # the lock was not had in time: the next pass goes on
    with sessions.begin() as session:
        remaining = repo.partitions(session)
        report.horizon = remaining[0].lower if remaining else None
        if report.dropped and report.horizon is not None:
            repo.set_horizon(session, report.horizon)
            report.deleted_batches = repo.delete_expired_batches(session, report.horizon, cutoff)
        expiry = now - dt.timedelta(seconds=settings.quotas.idempotency_ttl_s) - CLOCK_SLACK
        report.deleted_idempotency_keys = purge_keys(session, max(expiry, report.horizon or expiry))
    if report.dropped or report.made:
        log.info("retention pass", extra=dataclasses.asdict(report))
    return report


def _retire(
    sessions: sessionmaker[Session], lower: dt.datetime, upper: dt.datetime, report: RetentionReport
) -> bool:
    """Keep, detach, drop the span's partitions: each step its own transaction under the
    retention lock, so each exclusive lock of a detach is held for nothing else. ``jobs``
    goes first: once its partition is detached nothing writes to the dependents' (every
    such write reads the job first, db/partitions.py), and the horizon moves past it in the
    same commit (spans go oldest first), so no reader finds its jobs neither present nor
    expired. A partition already gone (a pass cut short) is skipped. False: try next pass."""
    detached = []
    try:
        for table in repo.KEYS:  # jobs first, then the dependents in order
            part = repo.Partition(repo.partition_name(lower, table), lower, upper)
            with sessions.begin() as session:
                if not repo.lock_retention(session):
                    return False
                if part not in repo.partitions(session, table):
                    continue
                if table == "jobs":
                    report.kept_examples += repo.keep_training_examples(session, part)
                    report.trimmed_examples += repo.trim_training_examples(session, TRAINING_WINDOW)
            with sessions.begin() as session:
                if not (repo.lock_retention(session) and part in repo.partitions(session, table)):
                    return False
                repo.detach(session, part, table=table)
                if table == "jobs":  # in the detach's own commit: never a moment of 404
                    repo.set_horizon(session, upper)
            detached.append((table, part.name))
    except DBAPIError as error:  # lock_timeout (a table is busy), or a partition gone under us
        log.warning(
            "could not retire a partition; next pass",
            extra={"partition": repo.partition_name(lower), "error": type(error.orig).__name__},
        )
        return False
    finally:
        if detached:
            with sessions.begin() as session:
                for _, name in detached:
                    repo.drop_table(session, name)
            for table, name in detached:
                (report.dropped if table == "jobs" else report.dropped_dependents).append(name)
    return True


def retain_forever(
    sessions: sessionmaker[Session], settings: Settings, stop: threading.Event
) -> None:
    """Run a retention pass at once, then every ``retention_interval_s`` until ``stop``."""
    while True:
        try:
            enforce(sessions, settings)
        except Exception:
            log.exception("retention pass failed")
        if stop.wait(settings.scheduler.retention_interval_s):
            return
