"""The Flask app factory."""

from __future__ import annotations

import logging

from flask import Flask

from api.http import metrics, problems, ratelimit, request_hooks
from api.http.json_provider import OrjsonProvider, column_json
from api.routes import (
    batches,
    dashboard,
    docs,
    experiments,
    health,
    jobs,
    models,
    scaling,
    stats,
    training,
    webhooks,
)
from api.services.inserter import MAX_GROUP, GroupInserter
from api.services.progress import ProgressReader
from api.services.publisher import GroupPublisher
from api.services.shared_pipeline import SharedPipeline
from api.services.waiters import CompletionWaiter
from api.state import ApiState, TtlCache
from db.engine import make_engine, make_session_factory
from inferq.core import connections
from inferq.core.broker import lane_publisher, make_celery
from inferq.core.messages import PredictRequest
from inferq.core.settings import Settings
from inferq.core.status import completion_channel, make_redis

log = logging.getLogger(__name__)

#: Redis connections one API process keeps (requests take one per command or pipeline).
REDIS_CONNECTIONS = 32

#: Every resource of the API, one blueprint each.
BLUEPRINTS = (
    health.bp,
    jobs.bp,
    batches.bp,
    models.bp,
    experiments.bp,
    training.bp,
    scaling.bp,
    stats.bp,
    webhooks.bp,
    dashboard.bp,
    docs.bp,
    docs.ui_bp,
)


class _Flask(Flask):
    json_provider_class = OrjsonProvider  # compact, keys in the order given


def create_app(settings: Settings | None = None) -> Flask:
    """A ready API app; connections open on first use, never at import or build time."""
    settings = settings or Settings.from_env()
    app = _Flask("inferq.api")
    app.config.update(MAX_CONTENT_LENGTH=settings.api.max_body_bytes)
    pool = connections.pool(settings, "api")
    engine = make_engine(
        settings.require_database_url(),
        pool_size=pool.size,
        max_overflow=pool.overflow,
        application_name="inferq-api",
        pre_ping=False,
        pool_timeout_s=settings.database.api_db_wait_s,
        json_serializer=column_json,
    )
    celery = make_celery(settings)
    send = lane_publisher(celery, settings)  # on every submit: the shortest way there is
    sessions = make_session_factory(engine)
    # Bounded: thousands of concurrent requests (gevent) must queue for a few Redis
    # connections, not open one each; the pool's wait ends in a 503 like a dead Redis.
    redis = make_redis(settings, max_connections=REDIS_CONNECTIONS)
    ApiState(
        settings=settings,
        sessions=sessions,
        redis=redis,
        redis_trips=SharedPipeline(redis),
        celery=celery,
        publisher=GroupPublisher(
            lambda job_ids, lane: send(PredictRequest(tuple(job_ids), lane)),
            # A worker prefetches up to max_batch_size messages: small groups keep what one
            # worker may hold (and a killed one leaves to redelivery) near a few batches.
            max_group=max(1, settings.worker.max_batch_size // 4),
            # publish retries within bounds of its own; this only catches a stuck thread
            timeout_s=settings.api.publish_timeout_s * 4 + 1,
        ),
        inserter=GroupInserter(
            sessions, max_group=MAX_GROUP, queue_timeout_s=settings.database.api_db_wait_s
        ),
        progress=ProgressReader(sessions, queue_timeout_s=settings.database.api_db_wait_s),
        waiter=CompletionWaiter(lambda: make_redis(settings), completion_channel(settings)),
        principals=TtlCache(settings.api.auth_cache_s),
        models=TtlCache(settings.api.model_cache_s),
    ).init_app(app)
    problems.init_app(app)
    request_hooks.init_app(app)
    ratelimit.init_app(app)
    for blueprint in BLUEPRINTS:
        app.register_blueprint(blueprint)
    metrics.init_app(app)  # after the access log's hook: see metrics.init_app
    return app
