"""One poll's observation of a worker pool: broker depth, Postgres activity, heartbeats.

What waits is counted twice on purpose. The broker's ready count (Redis: the list *and*
Celery's priority sub-lists; RabbitMQ: ``message_count`` of a passive declare) misses the
messages workers hold unacked in their prefetch buffers; Postgres's ``queued`` count has
them all, since a job leaves ``queued`` only when a worker claims it. The backlog is the
larger of the two, so prefetched work is never invisible.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
from collections.abc import Sequence
from typing import Any

import redis
from kombu import Connection
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.scaling import busy_workers, lane_activity
from inferq.core.broker import queue_name
from inferq.core.settings import Settings
from inferq.core.status import read_beats
from scheduler.autoscaler.policy import Observation

log = logging.getLogger(__name__)

#: kombu's Redis transport keeps priority ``p`` of queue ``q`` in the list ``q\x06\x16p``.
REDIS_PRIORITY_SEP = "\x06\x16"
REDIS_PRIORITY_STEPS = (3, 6, 9)


@dataclasses.dataclass(frozen=True)
class LaneView:
    """What one lane looked like."""

    lane: str
    ready: int
    queued: int
    running: int
    arrival_rate: float
    completed: int
    busy_s: float

    @property
    def backlog(self) -> int:
        """Jobs waiting to start: the larger of broker-ready and Postgres-queued."""
        return max(self.ready, self.queued)


@dataclasses.dataclass(frozen=True)
class PoolView:
    """A pool's lanes, its live workers and those running a job now."""

    lanes: tuple[LaneView, ...]
    live_workers: tuple[str, ...]
    busy_workers: frozenset[str]

    @property
    def service_rate(self) -> float:
        """Jobs per second one busy worker finishes (0 when nothing finished lately)."""
        busy = sum(v.busy_s for v in self.lanes)
        done = sum(v.completed for v in self.lanes)
        return done / busy if busy > 0 else 0.0

    def observation(self, current: int) -> Observation:
        """The policy's input, with the backend's worker count."""
        return Observation(
            backlog=sum(v.backlog for v in self.lanes),
            running=sum(v.running for v in self.lanes),
            arrival_rate=sum(v.arrival_rate for v in self.lanes),
            service_rate=self.service_rate,
            current=current,
        )

    def as_json(self) -> dict[str, Any]:
        """The inputs recorded with a decision."""
        return {
            "lanes": [dataclasses.asdict(v) | {"backlog": v.backlog} for v in self.lanes],
            "service_rate": round(self.service_rate, 4),
            "live_workers": list(self.live_workers),
            "busy_workers": sorted(self.busy_workers),
        }


class Observer:
    """Reads the broker, Postgres and Redis for one pool's lanes."""

    def __init__(
        self,
        settings: Settings,
        lanes: Sequence[str],
        sessions: sessionmaker[Session],
        window_s: float = 60.0,
    ) -> None:
        self.settings = settings
        self.lanes = tuple(lanes)
        self.window_s = window_s
        self._sessions = sessions
        self._redis = redis.Redis.from_url(
            settings.effective_redis_url, socket_timeout=5, socket_connect_timeout=5
        )

    def observe(self) -> PoolView:
        """Read everything once."""
        ready = self.broker_ready()
        with transaction(self._sessions) as session:
            activity = lane_activity(session, self.lanes, self.window_s)
            busy = busy_workers(session, self.lanes)
        lanes = tuple(
            LaneView(
                a.lane,
                ready.get(a.lane, 0),
                a.queued,
                a.running,
                a.arrived / self.window_s,
                a.completed,
                a.busy_s,
            )
            for a in activity
        )
        return PoolView(lanes, tuple(sorted(self.live_workers())), frozenset(busy))

    def broker_ready(self) -> dict[str, int]:
        """Messages ready on the broker per lane (0 where the queue does not exist yet)."""
        url = self.settings.require_broker_url()
        if url.startswith(("redis://", "rediss://")):
            return redis_ready(self._redis, self.settings, self.lanes)
        return amqp_ready(url, self.settings, self.lanes)

    def live_workers(self) -> list[str]:
        """Identities of live workers consuming any of this pool's lanes."""
        return [
            name
            for name, raw in read_beats(self._redis, self.settings).items()
            if set(json.loads(raw).get("lanes", [])) & set(self.lanes)
        ]

    def close(self) -> None:
        """Release the Redis connection."""
        self._redis.close()


def redis_keys(settings: Settings, lane: str) -> list[str]:
    """The Redis lists holding ``lane``'s ready messages, priority sub-lists included."""
    base = f"{settings.namespace}:{queue_name(settings, lane)}"
    return [base] + [f"{base}{REDIS_PRIORITY_SEP}{p}" for p in REDIS_PRIORITY_STEPS]


def redis_ready(client: redis.Redis, settings: Settings, lanes: Sequence[str]) -> dict[str, int]:
    """LLEN of every list of every lane, summed per lane: one round trip."""
    pipe = client.pipeline(transaction=False)
    for lane in lanes:
        for key in redis_keys(settings, lane):
            pipe.llen(key)
    counts = iter(pipe.execute())
    steps = 1 + len(REDIS_PRIORITY_STEPS)
    return {lane: sum(int(next(counts)) for _ in range(steps)) for lane in lanes}


def broker_ready_counts(settings: Settings, lanes: Sequence[str]) -> dict[str, int]:
    """Ready messages per lane, read from the broker itself over a short-lived connection."""
    url = settings.require_broker_url()
    if url.startswith(("redis://", "rediss://")):
        client = redis.Redis.from_url(url, socket_timeout=5, socket_connect_timeout=5)
        try:
            return redis_ready(client, settings, lanes)
        finally:
            client.close()
    return amqp_ready(url, settings, lanes)


def amqp_ready(url: str, settings: Settings, lanes: Sequence[str]) -> dict[str, int]:
    """RabbitMQ's ready count per lane, by a passive declare (creates nothing)."""
    out: dict[str, int] = {}
    with Connection(url, connect_timeout=5) as conn:
        for lane in lanes:
            channel = conn.channel()
            try:
                _, count, _ = channel.queue_declare(queue_name(settings, lane), passive=True)
                out[lane] = int(count)
            except conn.channel_errors:
                out[lane] = 0  # not declared yet: no worker or publisher has run
            finally:
                with contextlib.suppress(Exception):
                    channel.close()
    return out
