"""Retention: jobs older than ``INFERQ_JOB_RETENTION`` go a whole partition at a time.

Each pass (every ``INFERQ_RETENTION_INTERVAL_S``, in the scheduler) makes partitions ahead
of now, then drops the partitions wholly older than the retention cutoff — but none a batch
not yet expired still has items in (a batch's results stay readable until the batch is as
old as the retention, counted from its completion). Before a partition goes, its labelled
jobs are kept as training examples (the newest ``TRAINING_WINDOW`` a model's retraining
reads, no more), so retraining learns from all the feedback it would have seen.
Dropping a partition is O(1): no row-by-row delete of jobs, no bloat, no long lock.
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
    kept_examples: int = 0
    trimmed_examples: int = 0
    deleted_dependents: int = 0
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
        expired = [p for p in repo.partitions(session) if p.upper <= limit]
    for part in expired:
        if not _retire(sessions, part, report):
            break  # the lock was not had in time: the next pass goes on
    with sessions.begin() as session:
        remaining = repo.partitions(session)
        report.horizon = remaining[0].lower if remaining else None
        if report.dropped and report.horizon is not None:
            repo.set_horizon(session, report.horizon)
            report.deleted_batches = repo.delete_expired_batches(session, report.horizon, cutoff)
    if report.dropped or report.made:
        log.info("retention pass", extra=dataclasses.asdict(report))
    return report


def _retire(sessions: sessionmaker[Session], part: repo.Partition, report: RetentionReport) -> bool:
    """Keep, delete, detach, drop: each step its own transaction under the retention lock,
    so the exclusive lock of the detach is held for nothing else. False: try next pass."""
    try:
        with sessions.begin() as session:
            if not _still_mine(session, part):
                return False
            report.kept_examples += repo.keep_training_examples(session, part)
            report.trimmed_examples += repo.trim_training_examples(session, TRAINING_WINDOW)
            report.deleted_dependents += repo.delete_dependents(session, part.upper)
        with sessions.begin() as session:
            if not _still_mine(session, part):
                return False
            repo.detach(session, part)
        with sessions.begin() as session:
            repo.drop_table(session, part.name)
            # Feedback sent in the moment between the delete and the detach.
            report.deleted_dependents += repo.delete_dependents(session, part.upper)
    except DBAPIError as error:  # lock_timeout (jobs is busy), or a partition gone under us
        log.warning(
            "could not retire a partition; next pass",
            extra={"partition": part.name, "error": type(error.orig).__name__},
        )
        return False
    report.dropped.append(part.name)
    return True


def _still_mine(session: Session, part: repo.Partition) -> bool:
    """Whether this pass holds the retention lock and the partition is still attached."""
    return repo.lock_retention(session) and part in repo.partitions(session)


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
