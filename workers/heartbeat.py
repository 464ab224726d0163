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

from inferq.settings import Settings
from inferq.status import worker_key

log = logging.getLogger(__name__)


class Heartbeat:
    """A daemon thread that refreshes this worker's key every ``heartbeat_interval_s``."""

    def __init__(self, client: redis.Redis, settings: Settings, name: str) -> None:
        self._client = client
        self._settings = settings
        self._key = worker_key(settings, name)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inferq-heartbeat", daemon=True)
        self._info = {
            "name": name,
            "pid": os.getpid(),
            "lanes": list(settings.lanes),
            "started_at": time.time(),
        }

    def start(self) -> None:
        """Beat once now (so the worker is live before it consumes), then in the background."""
        self.beat()
        self._thread.start()

    def beat(self) -> None:
        """Refresh the key; a Redis outage is logged and retried on the next beat."""
        try:
            ttl_ms = int(self._settings.heartbeat_ttl_s * 1000)
            self._client.set(self._key, json.dumps({**self._info, "at": time.time()}), px=ttl_ms)
        except redis.RedisError:
            log.warning("heartbeat failed", exc_info=True)

    def stop(self) -> None:
        """Stop beating and remove the key: this worker holds nothing any more."""
        self._stop.set()
        try:
            self._client.delete(self._key)
        except redis.RedisError:
            log.warning("could not remove heartbeat key", exc_info=True)

    def _run(self) -> None:
        while not self._stop.wait(self._settings.heartbeat_interval_s):
            self.beat()
