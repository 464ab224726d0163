"""The reconciler: every accepted job reaches a terminal state, whatever got lost.

Each pass (1) puts back in the queue the jobs held by workers whose heartbeat expired, or
running past the time limit, and (2) publishes again the queued jobs whose message failed
to publish or has waited unclaimed too long. Claims are guarded, so a duplicate message
costs a no-op, never a second run.

"Too long" depends on the lane. While the broker still holds ready messages for a lane, a
job waiting there is most likely behind them (a large batch takes hours), not lost: it is
published again only after ``BUSY_FACTOR`` times the usual wait, so a long backlog is not
doubled every few minutes. Once the lane's queue is empty, what is still queued in Postgres
lost its message (or sits in a worker's prefetch buffer) and goes out again after the usual
``stale_queued_s``.

A broker that restarted lost what it held in memory: everything, without persistence, or
its last second of writes with the append-only file. The reconciler keeps the Redis run id
it last saw under a key in the broker; when that key is gone (the data went) or names
another run (the server restarted), it publishes every queued job again at once instead of
waiting out ``stale_queued_s``. The duplicates this makes of messages that did survive cost
a claim that finds nothing to do.

A pass first checks that the stack's Redis is still its own (:mod:`inferq.core.instance`),
and refuses to touch one that another stack claimed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence

import redis
from celery import Celery
from redis import Redis
from sqlalchemy.orm import Session, sessionmaker

from db.jobs import (
    database_now,
    expire_jobs,
    lanes_with_old_jobs,
    mark_unpublished,
    overdue_jobs,
    requeue_jobs,
    running_workers,
    take_queued_before,
    take_unpublished,
)
from inferq.core.broker import publish
from inferq.core.instance import check_claim
from inferq.core.messages import PredictRequest
from inferq.core.settings import LANES, Settings
from inferq.core.status import announce, beating
from inferq.domain.webhooks import notify_finished
from scheduler.autoscaler.observe import broker_ready_counts

log = logging.getLogger(__name__)

PUBLISH_CHUNK = 100
#: Queued jobs taken (and published) per transaction when the broker lost its messages.
REFILL_CHUNK = 1000
#: How much longer a job may wait in a lane whose queue still holds messages (see above).
BUSY_FACTOR = 12


@dataclasses.dataclass(frozen=True)
class ReconcileReport:
    """What one pass did."""

    requeued: int = 0
    republished: int = 0
    expired: int = 0
    #: Of ``republished``, those sent again because the broker restarted.
    refilled: int = 0


def broker_marker_key(settings: Settings) -> str:
    """The key in the broker's Redis holding the run id of that Redis the reconciler saw."""
    return f"{settings.namespace}:broker:run"


def broker_redis(settings: Settings) -> redis.Redis | None:
    """A client of the broker when it is a Redis (whose restarts the reconciler watches)."""
    url = settings.broker_url or ""
    if not url.startswith(("redis://", "rediss://")):
        return None
    return redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)


@dataclasses.dataclass
class Reconciler:
    """Holds the connections one reconciling process needs."""

    settings: Settings
    sessions: sessionmaker[Session]
    redis: redis.Redis
    app: Celery
    #: The broker when it is a Redis; None: its restarts are not watched (RabbitMQ).
    broker: Redis | None = None
    #: Ready messages per lane on the broker.
    broker_ready: Callable[[Settings, Sequence[str]], dict[str, int]] = broker_ready_counts

    def run_once(self) -> ReconcileReport:
        """One pass; safe to run from several processes at once. Raises ForeignRedis, and
        does nothing, when the stack's Redis belongs to another stack."""
        self._check_owner()
        requeued = self._requeue_lost()
        refilled = self._refill_after_broker_restart()
        age = self.settings.scheduler.stale_queued_s
        with self.sessions.begin() as session:
            expired = expire_jobs(session)
            # The broker is asked only when some lane has jobs old enough to be stale.
            waiting = lanes_with_old_jobs(session, LANES, age)
            stale = (
                take_unpublished(
                    session,
                    age,
                    busy_lanes=self._busy_lanes(waiting),
                    busy_older_than_s=age * BUSY_FACTOR,
                )
                if waiting
                else []
            )
        if expired:
            announce(self.redis, self.settings, [(str(job.id), job.status) for job in expired])
            notify_finished(self.app, self.settings, self.sessions, [job.id for job in expired])
        self._publish(stale)
        report = ReconcileReport(
            requeued=len(requeued),
            republished=len(stale) + refilled,
            expired=len(expired),
            refilled=refilled,
        )
        if report.requeued or report.republished:
            log.info("reconciled", extra=dataclasses.asdict(report))
        return report

    def _check_owner(self) -> None:
        """Raise ForeignRedis for a Redis another stack claimed; claim ours again when a
        restart lost the claim. A Redis that does not answer is checked next pass."""
        settings = self.settings
        clients = [(self.redis, settings.effective_redis_url)]
        if self.broker is not None and settings.broker_url != settings.effective_redis_url:
            clients.append((self.broker, settings.broker_url or ""))
        for client, url in clients:
            try:
                check_claim(client, settings, url)
            except redis.RedisError:
                log.warning("could not check who owns Redis", exc_info=True)

    def _redis_uptime_s(self) -> float:
        """How long the status Redis has run (infinite when it does not say)."""
        try:
            return float(self.redis.info("server")["uptime_in_seconds"])
        except (redis.RedisError, KeyError, ValueError):
            return float("inf")

    def _refill_after_broker_restart(self) -> int:
        """When the broker's Redis is another run than the last pass saw (or lost the key
        saying which), publish every queued job again now; return how many. Raises
        ForeignRedis, publishing nothing, when that Redis belongs to another stack."""
        if self.broker is None:
            return 0
        key = broker_marker_key(self.settings)
        try:
            run_id = str(self.broker.info("server")["run_id"])
            raw = self.broker.get(key)
        except redis.RedisError:
            return 0  # the broker is down: the publishes would fail anyway
        seen = raw.decode() if isinstance(raw, bytes) else raw
        if seen == run_id:
            return 0
        # A Redis that restarted empty lost this stack's claim, and the pass's check may have
        # run while it was still down: check (and claim) it again before every queued job
        # goes into it, so none goes to another stack's Redis that took the address.
        self._check_owner()
        total = self._publish_queued()
        # Recorded only once every queued job went out: a scheduler that dies half-way (it
        # does, when the restart also took its beat lock) leaves the refill to the next one.
        # Two reconcilers may both refill; the duplicates cost a claim each.
        with contextlib.suppress(redis.RedisError):
            self.broker.set(key, run_id)
        log.warning(
            "the broker restarted (or lost its data): queued jobs published again",
            extra={"jobs": total, "run_id": run_id, "last_seen": seen},
        )
        return total

    def _publish_queued(self) -> int:
        """Publish every job queued now whose message was sent before, in chunks."""
        with self.sessions.begin() as session:
            cutoff = database_now(session)
        total = 0
        while True:
            with self.sessions.begin() as session:
                jobs = take_queued_before(session, cutoff, REFILL_CHUNK)
            self._publish(jobs)
            total += len(jobs)
            if len(jobs) < REFILL_CHUNK:
                return total

    def _busy_lanes(self, lanes: Sequence[str]) -> list[str]:
        """Those of ``lanes`` whose broker queue holds ready messages; none when the broker
        does not say (then every lane gets the usual wait, as it is safest to republish)."""
        try:
            ready = self.broker_ready(self.settings, lanes)
        except Exception:
            log.warning("could not read the broker's queues", exc_info=True)
            return []
        return [lane for lane, count in ready.items() if count > 0]

    def _requeue_lost(self) -> list[tuple[uuid.UUID, str]]:
        # A Redis that restarted lost every heartbeat: a worker counts as gone only once it
        # had a heartbeat's lifetime to write one again (else a live worker's batch ran twice).
        trust_beats = self._redis_uptime_s() >= self.settings.worker.heartbeat_ttl_s
        back: list[tuple[uuid.UUID, str]] = []
        with self.sessions.begin() as session:
            overdue = overdue_jobs(session, self.settings.scheduler.job_time_limit_s)
            holding = running_workers(session)
            # The holders' own keys, not the index: a worker of an older release is alive too.
            alive = beating(self.redis, self.settings, holding) if trust_beats else None
            for worker, jobs in holding.items():
                gone = alive is not None and worker not in alive
                lost = [job_id for job_id, _, _ in jobs if gone or job_id in overdue]
                if lost:
                    log.warning(
                        "requeueing jobs of a lost or stuck worker",
                        extra={"worker": worker, "jobs": len(lost)},
                    )
                    back += requeue_jobs(session, lost, worker)
        # One message each: jobs whose worker died may hold a poison input; apart, the
        # worker can isolate them (see workers.runner.isolate_suspects).
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
                    publish(self.app, self.settings, PredictRequest(tuple(part), lane))
                except Exception:  # broker down: the next pass tries these again
                    log.exception("could not publish; will retry", extra={"jobs": len(part)})
                    with self.sessions.begin() as session:
                        mark_unpublished(session, [uuid.UUID(i) for i in part])
