"""Worker heartbeats in Redis: a key per worker that expires when the worker stops beating.

The reconciler treats jobs held by a worker without a live heartbeat as lost.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time

import redis

from inferq.core.settings import Settings
from inferq.core.status import remove_beat, write_beat
from workers.liveness import Liveness

log = logging.getLogger(__name__)


class Heartbeat:
    """A daemon thread that refreshes this worker's key every ``heartbeat_interval_s``."""

    def __init__(
        self, client: redis.Redis, settings: Settings, name: str, liveness: Liveness | None = None
    ) -> None:
        self._liveness = liveness
        self._client = client
        self._settings = settings
        self._name = name
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inferq-heartbeat", daemon=True)
        if liveness is not None:
            # Ready the moment the consumer loop first runs, not up to an interval later.
            liveness.on_start = self.beat
        self._info = {
            "name": name,
            "pid": os.getpid(),
            "lanes": list(settings.worker.lanes),
            "started_at": time.time(),
        }

    def start(self) -> None:
        """Beat once now (so the worker is live before it consumes), then in the background."""
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        """Refresh the key; a Redis outage is logged and retried on the next beat."""
        try:
            ttl_ms = int(self._settings.worker.heartbeat_ttl_s * 1000)
            stalled = self._liveness.stalled_for() if self._liveness else 0.0
            beat = {
                **self._info,
                "at": time.time(),
                "consuming": stalled < 5,
                "ready": self._liveness.started() if self._liveness else True,
                "stalled_s": round(stalled, 1),
            }
            write_beat(self._client, self._settings, self._name, json.dumps(beat), ttl_ms)
        except redis.RedisError:
            log.warning("heartbeat failed", exc_info=True)

    def stop(self) -> None:
        """Stop beating and remove the key: this worker holds nothing any more."""
        self._stop.set()
        try:
            remove_beat(self._client, self._settings, self._name)
        except redis.RedisError:
            log.warning("could not remove heartbeat key", exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self._settings.worker.heartbeat_interval_s):
            self.beat()
            if self._liveness and self._liveness.stalled_for() > self._settings.worker.stall_exit_s:
                self._give_up()

    def _give_up(self) -> None:
        # Stop beating so the reconciler requeues our running jobs; the broker returns our
        # unacked messages when the connection drops with the process.
        log.error(
            "worker stopped consuming; exiting so it is replaced", extra={"worker": self._name}
        )
        self.stop()
        os._exit(3)
