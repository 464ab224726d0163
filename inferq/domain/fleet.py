"""The workers as their heartbeats in Redis describe them (see workers.heartbeat).

Each live worker keeps a key ``<namespace>:worker:<name>``, named in the set
``<namespace>:workers`` (see inferq.core.status.read_beats), holding JSON: its lanes, whether
its consumer loop is running (``consuming``), whether that loop has run at all yet
(``ready``: its queues are being consumed), for how long it has stalled, and when it started.
The API's stats, ETAs and readiness and the scheduler's gauges read them here.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterable

import redis

from inferq.core.settings import Settings
from inferq.core.status import read_beats


@dataclasses.dataclass(frozen=True)
class WorkerBeat:
    """One live worker's last heartbeat."""

    name: str
    lanes: tuple[str, ...]
    consuming: bool
    stalled_s: float
    ready: bool
    started_at: float | None
    at: float | None

    def to_dict(self, now: float | None = None) -> dict[str, object]:
        """JSON-ready, with the worker's uptime."""
        now = time.time() if now is None else now
        return {
            "name": self.name,
            "lanes": list(self.lanes),
            "consuming": self.consuming,
            "stalled_s": self.stalled_s,
            "uptime_s": round(now - self.started_at, 1) if self.started_at else None,
        }


def worker_beats(client: redis.Redis, settings: Settings) -> list[WorkerBeat]:
    """Every worker whose heartbeat has not expired, by name."""
    return [_parse(name, raw) for name, raw in sorted(read_beats(client, settings).items())]


def _parse(name: str, raw: bytes | str) -> WorkerBeat:
    try:
        body = json.loads(raw)
    except ValueError:
        body = {}
    if not isinstance(body, dict):
        body = {}
    return WorkerBeat(
        name=name,
        lanes=tuple(str(lane) for lane in body.get("lanes") or ()),
        consuming=bool(body.get("consuming", True)),
        # A worker from before this field was written is taken as ready.
        ready=bool(body.get("ready", True)),
        stalled_s=float(body.get("stalled_s") or 0.0),
        started_at=body.get("started_at"),
        at=body.get("at"),
    )


def per_lane(beats: Iterable[WorkerBeat], lanes: Iterable[str]) -> dict[str, tuple[int, int]]:
    """``lane -> (consuming workers, stalled workers)`` for each of ``lanes``."""
    counts = {lane: (0, 0) for lane in lanes}
    for beat in beats:
        for lane in beat.lanes:
            consuming, stalled = counts.get(lane, (0, 0))
            counts[lane] = (consuming + 1, stalled) if beat.consuming else (consuming, stalled + 1)
    return counts


def ready_workers(client: redis.Redis, settings: Settings, lane: str) -> int:
    """How many live workers consume ``lane`` now: their consumer loop has started and is
    not stalled, so a job published to it now is taken."""
    return sum(
        1 for b in worker_beats(client, settings) if lane in b.lanes and b.ready and b.consuming
    )
