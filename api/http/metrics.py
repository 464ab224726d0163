"""The API's Prometheus metrics: request hooks, and ``GET /metrics``.

Requests are counted by route *template* (``/v1/jobs/<job_id>``, never the id) and status;
submits by model and lane, and cache hits, are read from the submit's own response, so no
view carries metrics code. Under gunicorn every process writes its values to the node's
``PROMETHEUS_MULTIPROC_DIR`` (see :mod:`api.server`), and ``/metrics`` adds them up, so one
scrape of a node sees all its processes.

The same hook tags the request with the job it is about (``g.job_id``), which the access
log writes beside the request id: nginx's log, the API's and the worker's batch log then
join on request id and job id.
"""

from __future__ import annotations

import dataclasses
import logging
import time

from flask import Flask, Response, current_app, g, request
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client import multiprocess as prom_multiprocess

from inferq.core.metrics import ApiMetrics, multiprocess_dir

log = logging.getLogger(__name__)

UNMATCHED = "unmatched"


def init_app(app: Flask) -> None:
    """Measure every request of ``app`` and serve ``/metrics``.

    Register it after the app's own ``after_request`` hooks: Flask runs those in reverse,
    so this one runs first and ``g.job_id`` is set before the access log is written.
    """
    registry = CollectorRegistry()
    app.extensions["inferq.metrics"] = ApiMetrics(registry)
    app.extensions["inferq.metrics.registry"] = registry
    app.before_request(_started)
    app.after_request(_finished)
    app.teardown_request(_left)
    app.add_url_rule("/metrics", "metrics", _exposition, methods=["GET"])


def api_metrics(app: Flask) -> ApiMetrics:
    """The metrics ``app`` records into."""
    return app.extensions["inferq.metrics"]


def _metrics() -> ApiMetrics:
    return api_metrics(current_app)


def _started() -> None:
    g.metrics_started = time.perf_counter()
    g.metrics_in_progress = True
    _metrics().in_progress.inc()


def _finished(response: Response) -> Response:
    # A failing hook is logged and never turns a good answer into an error.
    try:
        _record(response)
    except Exception:
        log.exception("could not record request metrics")
    return response


def _record(response: Response) -> None:
    metrics = _metrics()
    route = request.url_rule.rule if request.url_rule is not None else UNMATCHED
    method = request.method
    metrics.requests.labels(method, route, str(response.status_code)).inc()
    started = g.get("metrics_started")
    if started is not None:
        metrics.latency.labels(method, route).observe(time.perf_counter() - started)
    job_id = (request.view_args or {}).get("job_id")
    submitted: Submitted | None = g.get("submitted")
    if submitted is not None and response.status_code in (200, 202):
        job_id = submitted.job_id
        if not submitted.replayed:
            metrics.submitted.labels(submitted.model, submitted.lane).inc()
            if submitted.cached:
                metrics.cache_hits.labels(submitted.model).inc()
    if job_id is not None:
        g.job_id = str(job_id)[:64]


@dataclasses.dataclass(frozen=True)
class Submitted:
    """What the submit route accepted, for its metrics and its access log line."""

    job_id: str
    model: str
    lane: str
    cached: bool
    replayed: bool


def note_submitted(submitted: Submitted) -> None:
    """Called by the submit route once it has its job (read back by the metrics hook)."""
    g.submitted = submitted


def _left(_: BaseException | None) -> None:
    if g.pop("metrics_in_progress", False):
        _metrics().in_progress.dec()


def _exposition() -> Response:
    """Prometheus text format: every process of this node when under gunicorn."""
    path = multiprocess_dir()
    if path:
        registry = CollectorRegistry()
        prom_multiprocess.MultiProcessCollector(registry, path)
    else:
        registry = current_app.extensions["inferq.metrics.registry"]
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)
