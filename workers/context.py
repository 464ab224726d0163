"""What one worker process holds for its whole life: connections, models, its name."""

from __future__ import annotations

import dataclasses

import redis
from celery import Celery
from sqlalchemy.orm import Session, sessionmaker

from db.engine import KeptConnection, make_engine, make_session_factory
from inferq.core import connections
from inferq.core.artifacts.store import open_store, open_store_at
from inferq.core.metrics import WorkerMetrics
from inferq.core.settings import Settings
from inferq.core.status import make_redis
from workers.artifact_cache import ArtifactCache
from workers.device import choose_device, configure_threads
from workers.liveness import Liveness
from workers.middleware import Middleware, default_middleware
from workers.runtime import ModelRuntime


@dataclasses.dataclass
class WorkerContext:
    """Per-process resources, built once (lazily, after any fork)."""

    settings: Settings
    name: str
    app: Celery
    sessions: sessionmaker[Session]
    redis: redis.Redis
    runtime: ModelRuntime
    #: What a batch's claim and store run on: a connection kept in autocommit.
    statements: KeptConnection
    liveness: Liveness = dataclasses.field(default_factory=Liveness)
    metrics: WorkerMetrics = dataclasses.field(default_factory=WorkerMetrics)
    #: Hooks around every batch (workers/middleware.py).
    middleware: list[Middleware] = dataclasses.field(default_factory=default_middleware)

    @classmethod
    def create(cls, settings: Settings, name: str, app: Celery) -> WorkerContext:
        """Connect nothing yet; pools open on first use."""
        pool = connections.pool(settings, "worker")
        engine = make_engine(
            settings.require_database_url(),
            pool_size=pool.size,
            max_overflow=pool.overflow,
            application_name=f"inferq-worker {name}",
            pre_ping=False,  # the batch path retries once on a dropped connection instead
        )
        sessions = make_session_factory(engine)
        configure_threads(settings.worker.torch_threads)
        metrics = WorkerMetrics()

        def loaded(model: str, fetch_s: float, load_s: float) -> None:
            if fetch_s > 0:
                metrics.model_fetch.labels(model).observe(fetch_s)
            metrics.model_load.labels(model).observe(load_s)

        return cls(
            settings=settings,
            name=name,
            app=app,
            sessions=sessions,
            statements=KeptConnection(engine),
            redis=make_redis(settings),
            runtime=ModelRuntime(
                sessions,
                choose_device(settings.worker.device),
                ArtifactCache(
                    open_store(settings),
                    settings.artifact_cache_path,
                    settings.artifacts.artifact_cache_bytes,
                    open_root=lambda uri: open_store_at(uri, settings),
                ),
                on_load=loaded,
            ),
            metrics=metrics,
        )
