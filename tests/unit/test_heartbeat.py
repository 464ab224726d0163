"""A worker's heartbeat says it is ready only once its consumer loop runs."""

from __future__ import annotations

import json
from typing import Any

from inferq.core.settings import Settings
from workers.heartbeat import Heartbeat
from workers.liveness import Liveness


class Keys:
    """What the heartbeat writes, by key (through a transaction: ``set``, then ``sadd``)."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self.indexed: set[str] = set()

    def pipeline(self, transaction: bool) -> Keys:
        return self

    def set(self, key: str, value: str, px: int) -> None:
        self.values[key] = json.loads(value)

    def sadd(self, key: str, name: str) -> None:
        self.indexed.add(name)

    def execute(self) -> None:
        pass


def test_a_worker_is_ready_from_the_first_run_of_its_consumer_loop() -> None:
    """Catches: readiness (and `inferq up`'s banner) taking a worker that is still starting,
    whose queues nobody consumes yet, for one that takes jobs."""
    keys, liveness = Keys(), Liveness()
    heartbeat = Heartbeat(keys, Settings.of(), "worker-1", liveness)  # type: ignore[arg-type]

    # Given a worker that beat once at start, before its consumer loop ran
    heartbeat.beat()
    (body,) = keys.values.values()
    assert body["ready"] is False and body["consuming"] is True

    # When the loop first marks itself, then a beat goes out at once, saying ready
    liveness.mark()
    (body,) = keys.values.values()
    assert body["ready"] is True
