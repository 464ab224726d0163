"""Per-app resources (pools, clients, caches), created by ``create_app`` and connected lazily."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable
from typing import Any, Generic, TypeVar

import redis
from celery import Celery
from flask import Flask, current_app
from sqlalchemy.orm import Session, sessionmaker

from api.services.inserter import GroupInserter
from api.services.progress import ProgressReader
from api.services.publisher import GroupPublisher
from api.services.recent import RecentViews
from api.services.shared_pipeline import SharedPipeline
from api.services.waiters import CompletionWaiter
from inferq.core.artifacts.store import ArtifactStore
from inferq.core.settings import Settings

#: Keys loading at once (per cache) before two keys may share a lock.
LOAD_STRIPES = 64

K = TypeVar("K")
V = TypeVar("V")


class TtlCache(Generic[K, V]):
    """A tiny thread-safe cache whose entries live ``ttl_s`` seconds (misses are not cached).

    One request at a time loads a key: an API process serves thousands of requests at once
    (gevent), and an entry expiring under them must not send every one of them to Postgres
    or Redis together. While one reloads an expired entry the others answer from it; with no
    entry yet they wait for the load.

    With ``busy_share``, an entry that took long to load lives longer: at least its load's
    time divided by the share, so reloading takes no more than that share of the time (a
    figure computed over a deep backlog is re-read every few seconds, not every second).
    """

    def __init__(
        self, ttl_s: float, max_entries: int = 10_000, busy_share: float | None = None
    ) -> None:
        self._ttl = ttl_s
        self._busy_share = busy_share
        self._max = max_entries
        self._data: dict[K, tuple[float, V]] = {}
        self._lock = threading.Lock()
        self._loading: list[threading.RLock] | None = None  # made on the first miss

    def get(self, key: K, load: Callable[[], V | None]) -> V | None:
        """The cached value for ``key``, or ``load()`` stored for next time when not None."""
        hit = self._data.get(key)
        if hit and hit[0] > time.monotonic():
            return hit[1]
        if self._ttl <= 0:
            return load()
        loading = self._stripe(key)
        if not loading.acquire(blocking=hit is None):
            assert hit is not None
            return hit[1]  # another request is reloading it
        try:
            hit = self._data.get(key)
            if hit and hit[0] > time.monotonic():
                return hit[1]  # loaded while this one waited
            return self._load(key, load)
        finally:
            loading.release()

    def _stripe(self, key: K) -> threading.RLock:
        if self._loading is None:
            with self._lock:
                if self._loading is None:
                    self._loading = [threading.RLock() for _ in range(LOAD_STRIPES)]
        return self._loading[hash(key) % LOAD_STRIPES]

    def _load(self, key: K, load: Callable[[], V | None]) -> V | None:
        now = time.monotonic()
        value = load()
        if value is not None:
            ttl = self._ttl
            if self._busy_share:
                ttl = max(ttl, (time.monotonic() - now) / self._busy_share)
            with self._lock:
                if len(self._data) >= self._max:
                    self._data.clear()
                self._data[key] = (now + ttl, value)
        return value

    def forget(self, key: K) -> None:
        """Drop ``key`` (this process sees a change it made at once)."""
        with self._lock:
            self._data.pop(key, None)


@dataclasses.dataclass
class ApiState:
    """Everything a request handler needs beyond the request itself."""

    settings: Settings
    sessions: sessionmaker[Session]
    redis: redis.Redis
    celery: Celery
    waiter: CompletionWaiter
    publisher: GroupPublisher
    inserter: GroupInserter
    progress: ProgressReader
    #: A submit's Redis round trip, shared with the submits in flight beside it.
    redis_trips: SharedPipeline
    principals: TtlCache = dataclasses.field(default_factory=lambda: TtlCache(0))
    models: TtlCache = dataclasses.field(default_factory=lambda: TtlCache(0))
    #: The retention horizon (``db.partitions.horizon``), re-read at most once a minute.
    horizon: TtlCache = dataclasses.field(default_factory=lambda: TtlCache(60))
    #: Views of open jobs answered a moment ago, for the long-poll that follows.
    recent: RecentViews = dataclasses.field(default_factory=RecentViews)
    #: The artifact store, opened on first use (api/services/models.py).
    artifacts: ArtifactStore | None = None

    def init_app(self, app: Flask) -> None:
        """Attach to ``app`` (Flask's extension pattern)."""
        app.extensions["inferq"] = self


def state() -> ApiState:
    """The state of the app serving the current request."""
    found: ApiState = current_app.extensions["inferq"]
    return found


def app_cache(name: str, ttl_s: float, busy_share: float | None = None) -> TtlCache[Any, Any]:
    """The current app's :class:`TtlCache` called ``name``, made on first use. (A
    ``setdefault`` with a new cache as its default would build, lock included, and throw
    away a cache on every call: 2.6 % of an API process's CPU at submit.)"""
    found: TtlCache[Any, Any] | None = current_app.extensions.get(name)
    if found is None:
        found = current_app.extensions.setdefault(name, TtlCache(ttl_s, busy_share=busy_share))
    return found
