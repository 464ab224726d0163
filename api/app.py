"""The Flask app factory."""

from __future__ import annotations

import logging
import time
import uuid

from flask import Flask, Response, g, request

from api import metrics, problems, security
from api.publisher import GroupPublisher
from api.routes import dashboard, experiments, health, jobs, models, stats, training
from api.routes.batches import bp as batches_bp
from api.routes.scaling import bp as scaling_bp
from api.state import ApiState, TtlCache
from api.waiters import CompletionWaiter
from db.engine import make_engine, make_session_factory
from inferq.queues import make_celery, publish_predict
from inferq.settings import Settings
from inferq.status import completion_channel, make_redis

log = logging.getLogger(__name__)
access_log = logging.getLogger("inferq.api.access")


def create_app(settings: Settings | None = None) -> Flask:
    """A ready API app; connections open on first use, never at import or build time."""
    settings = settings or Settings.from_env()
    app = Flask("inferq.api")
    app.config.update(MAX_CONTENT_LENGTH=settings.max_body_bytes, JSON_SORT_KEYS=False)
    app.json.sort_keys = False  # type: ignore[attr-defined]
    engine = make_engine(
        settings.require_database_url(),
        pool_size=settings.api_threads // 2 + 2,
        application_name="inferq-api",
        pre_ping=False,
    )
    celery = make_celery(settings)
    ApiState(
        settings=settings,
        sessions=make_session_factory(engine),
        redis=make_redis(settings),
        celery=celery,
        publisher=GroupPublisher(
            lambda job_ids, lane: publish_predict(celery, settings, job_ids, lane),
            # A worker prefetches up to max_batch_size messages: small groups keep what one
            # worker may hold (and a killed one leaves to redelivery) near a few batches.
            max_group=max(1, settings.max_batch_size // 4),
            # publish_predict retries within bounds of its own; this only catches a stuck thread
            timeout_s=settings.publish_timeout_s * 4 + 1,
        ),
        waiter=CompletionWaiter(lambda: make_redis(settings), completion_channel(settings)),
        principals=TtlCache(settings.auth_cache_s),
        models=TtlCache(settings.model_cache_s),
    ).init_app(app)
    problems.init_app(app)
    security.init_app(app)
    app.register_blueprint(batches_bp)
    for blueprint in (health.bp, jobs.bp, models.bp, experiments.bp, stats.bp, dashboard.bp):
        app.register_blueprint(blueprint)
    app.register_blueprint(scaling_bp)
    app.register_blueprint(training.bp)
    app.before_request(_request_id)
    app.after_request(_echo_request_id)
    metrics.init_app(app)  # after the access log's hook: see metrics.init_app
    return app


def _request_id() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming[:128] if incoming.isprintable() and incoming else uuid.uuid4().hex
    g.started = time.perf_counter()


def _echo_request_id(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    elapsed_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
    # One structured line per request: with nginx's access log, the request id ties a client's
    # call to the node that served it.
    access_log.info(
        "request",
        extra={
            "request_id": g.get("request_id", ""),
            "job_id": g.get("job_id"),
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(elapsed_ms, 2),
            "remote_addr": request.remote_addr,
        },
    )
    return response
