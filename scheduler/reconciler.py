"""The reconciler: every accepted job reaches a terminal state, whatever got lost.

Each pass (1) puts back in the queue the jobs held by workers whose heartbeat expired, or
running past the time limit, and (2) publishes again the queued jobs whose message failed
to publish or has waited unclaimed too long. Claims are guarded, so a duplicate message
costs a no-op, never a second run.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections import defaultdict
from collections.abc import Iterable

import redis
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from db.jobs import (
    expire_jobs,
    mark_unpublished,
    overdue_jobs,
    requeue_jobs,
    running_workers,
    take_unpublished,
)
from inferq.queues import publish_predict
from inferq.settings import Settings
from inferq.status import announce, live_workers
from inferq.webhooks import notify_finished

log = logging.getLogger(__name__)

PUBLISH_CHUNK = 100


@dataclasses.dataclass(frozen=True)
class ReconcileReport:
    """What one pass did."""

    requeued: int = 0
    republished: int = 0
    expired: int = 0


@dataclasses.dataclass
class Reconciler:
    """Holds the connections one reconciling process needs."""

    settings: Settings
    sessions: sessionmaker[Session]
    redis: redis.Redis
    app: Celery

    def run_once(self) -> ReconcileReport:
        """One pass; safe to run from several processes at once."""
        requeued = self._requeue_lost()
        with self.sessions.begin() as session:
            expired = expire_jobs(session)
            stale = take_unpublished(session, self.settings.stale_queued_s)
        if expired:
            announce(self.redis, self.settings, [(str(job.id), job.status) for job in expired])
            notify_finished(self.app, self.settings, self.sessions, [job.id for job in expired])
        self._publish(stale)
        report = ReconcileReport(
            requeued=len(requeued), republished=len(stale), expired=len(expired)
        )
        if report.requeued or report.republished:
            log.info("reconciled", extra=dataclasses.asdict(report))
        return report

    def _requeue_lost(self) -> list[tuple[uuid.UUID, str]]:
        alive = live_workers(self.redis, self.settings)
        back: list[tuple[uuid.UUID, str]] = []
        with self.sessions.begin() as session:
            overdue = overdue_jobs(session, self.settings.job_time_limit_s)
            for worker, jobs in running_workers(session).items():
                lost = [job_id for job_id, _, _ in jobs if worker not in alive or job_id in overdue]
                if lost:
                    log.warning(
                        "requeueing jobs of a lost or stuck worker",
                        extra={"worker": worker, "jobs": len(lost)},
                    )
                    back += requeue_jobs(session, lost, worker)
        # One message each: jobs whose worker died may hold a poison input; apart, the
        # worker can isolate them (see workers.batch.isolate_suspects).
        self._publish(back, chunk=1)
        return back

    def _publish(self, jobs: Iterable[tuple[uuid.UUID, str]], chunk: int = PUBLISH_CHUNK) -> None:
        by_lane: dict[str, list[str]] = defaultdict(list)
        for job_id, lane in jobs:
            by_lane[lane].append(str(job_id))
        for lane, ids in by_lane.items():
            for start in range(0, len(ids), chunk):
                part = ids[start : start + chunk]
                try:
                    publish_predict(self.app, self.settings, part, lane)
                except Exception:  # broker down: the next pass tries these again
                    log.exception("could not publish; will retry", extra={"jobs": len(part)})
                    with self.sessions.begin() as session:
                        mark_unpublished(session, [uuid.UUID(i) for i in part])
