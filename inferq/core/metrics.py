"""The Prometheus metrics of every inferq process, defined in one place.

Each process builds its own set into a registry it owns (``ApiMetrics``, ``WorkerMetrics``,
``SchedulerMetrics``), so tests can build as many as they like and a process exports only
what it produces. Names follow Prometheus conventions (``inferq_`` prefix, base units,
``_total`` counters); label values are bounded: routes are URL templates, models are
registered model names, lanes and reasons are fixed sets. No job id, tenant or key is ever a
label value.

API nodes run several gunicorn processes: their values go through prometheus_client's
multiprocess mode (``PROMETHEUS_MULTIPROC_DIR``, set by :mod:`api.server` before this module
is imported). Workers and the scheduler are single processes that serve their own registry
on ``INFERQ_METRICS_PORT`` (:func:`serve`).
"""

from __future__ import annotations

import logging
import os

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    start_http_server,
)

log = logging.getLogger(__name__)

#: Request latency, long-polls included (they may hold a request for INFERQ_MAX_WAIT_S).
REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
#: From submit to a worker's claim; the online lane's SLO is read against these.
QUEUE_WAIT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
PREDICT_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
LOAD_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


def multiprocess_dir() -> str | None:
    """The multiprocess directory when this process runs in prometheus_client's multiprocess
    mode (an API node under gunicorn), else None."""
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


class ApiMetrics:
    """What an API node measures: requests, and the jobs they submit."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "inferq_http_requests",
            "HTTP requests answered, by route template and status code.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "inferq_http_request_duration_seconds",
            "Time to answer an HTTP request (long-polls included), by route template.",
            ["method", "route"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.in_progress = Gauge(
            "inferq_http_requests_in_progress",
            "Requests being answered now.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.submitted = Counter(
            "inferq_jobs_submitted",
            "Jobs accepted (idempotent replays not counted), by model and lane.",
            ["model", "lane"],
            registry=registry,
        )
        self.cache_hits = Counter(
            "inferq_result_cache_hits",
            "Submitted jobs answered from the result cache, by model.",
            ["model"],
            registry=registry,
        )


class WorkerMetrics:
    """What a worker process measures: its jobs, batches, predictions and models."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.jobs = Counter(
            "inferq_worker_jobs",
            "Jobs this worker finished and stored, by model and final status.",
            ["model", "status"],
            registry=reg,
        )
        self.failures = Counter(
            "inferq_worker_job_failures",
            "Jobs this worker failed, by model and reason (the error type of the job).",
            ["model", "reason"],
            registry=reg,
        )
        self.queue_wait = Histogram(
            "inferq_worker_queue_wait_seconds",
            "From submit to claim: how long a job waited for a worker, by model.",
            ["model"],
            buckets=QUEUE_WAIT_BUCKETS,
            registry=reg,
        )
        self.predict = Histogram(
            "inferq_worker_predict_seconds",
            "Time of one predict call on a batch, by model.",
            ["model"],
            buckets=PREDICT_BUCKETS,
            registry=reg,
        )
        self.batch_size = Histogram(
            "inferq_worker_batch_size",
            "Jobs per predict call, by model.",
            ["model"],
            buckets=BATCH_SIZE_BUCKETS,
            registry=reg,
        )
        self.batch_errors = Counter(
            "inferq_worker_batch_errors",
            "Batches that failed as a whole (their jobs were handed back), by reason.",
            ["reason"],
            registry=reg,
        )
        self.model_load = Histogram(
            "inferq_worker_model_load_seconds",
            "Time to load a model version's weights (once per version and process), by model.",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=reg,
        )
        self.model_fetch = Histogram(
            "inferq_worker_model_fetch_seconds",
            "Time to download a version's artifact from the store into the worker's cache "
            "(only when it was not cached already), by model.",
            ["model"],
            buckets=LOAD_BUCKETS,
            registry=reg,
        )
        self.last_batch = Gauge(
            "inferq_worker_last_batch_timestamp_seconds",
            "Unix time at which this worker last stored a batch.",
            registry=reg,
        )
        self.gpu_memory = Gauge(
            "inferq_worker_gpu_memory_bytes",
            "CUDA memory of this worker's device after its last batch, by kind "
            "(allocated, reserved, peak_allocated, total); absent on a CPU.",
            ["device", "kind"],
            registry=reg,
        )
        self.info = Gauge(
            "inferq_worker_info",
            "Always 1: the device and lanes of this worker.",
            ["device", "lanes"],
            registry=reg,
        )


class SchedulerMetrics:
    """What the scheduler measures: the reconciler, queues, workers, dependencies, quality."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        reg = self.registry
        self.reconciled = Counter(
            "inferq_reconciler_jobs",
            "Jobs the reconciler acted on: requeued (lost worker or over the time limit), "
            "republished (message lost or never sent), expired (Cancel-After passed).",
            ["action"],
            registry=reg,
        )
        self.passes = Counter(
            "inferq_reconciler_passes",
            "Reconciler passes, by outcome (ok, error).",
            ["outcome"],
            registry=reg,
        )
        self.queue_depth = Gauge(
            "inferq_queue_depth",
            "Queued jobs in Postgres (accepted, not yet claimed), by lane.",
            ["lane"],
            registry=reg,
        )
        self.running = Gauge(
            "inferq_jobs_running",
            "Jobs claimed by a worker and not finished, by lane.",
            ["lane"],
            registry=reg,
        )
        self.oldest_age = Gauge(
            "inferq_queue_oldest_job_age_seconds",
            "Age of the oldest queued job, by lane (0 when none waits).",
            ["lane"],
            registry=reg,
        )
        self.workers_live = Gauge(
            "inferq_workers_live",
            "Workers with a live heartbeat that are consuming, by lane they consume.",
            ["lane"],
            registry=reg,
        )
        self.workers_stalled = Gauge(
            "inferq_workers_stalled",
            "Workers with a live heartbeat whose consumer loop stopped, by lane.",
            ["lane"],
            registry=reg,
        )
        self.dependency_up = Gauge(
            "inferq_dependency_up",
            "1 when the dependency answered the scheduler's last probe, else 0.",
            ["dependency"],
            registry=reg,
        )
        self.feedback_accuracy = Gauge(
            "inferq_model_feedback_accuracy",
            "Share of recent labelled feedback that agrees with the active version's output.",
            ["model", "version"],
            registry=reg,
        )
        self.feedback_judged = Gauge(
            "inferq_model_feedback_judged",
            "Recent jobs of the active version with labelled feedback (the accuracy's n).",
            ["model", "version"],
            registry=reg,
        )
        self.holdout_accuracy = Gauge(
            "inferq_model_holdout_accuracy",
            "The active version's accuracy on its holdout set when it was trained.",
            ["model", "version"],
            registry=reg,
        )
        self.experiments_running = Gauge(
            "inferq_experiments_running", "Experiments running now.", registry=reg
        )
        self.last_collect = Gauge(
            "inferq_scheduler_last_collect_timestamp_seconds",
            "Unix time of the scheduler's last successful metrics pass.",
            registry=reg,
        )


def with_process_metrics(registry: CollectorRegistry) -> CollectorRegistry:
    """Add ``process_*`` (CPU, memory, open files) of this process to ``registry``."""
    ProcessCollector(registry=registry)
    return registry


def serve(registry: CollectorRegistry, host: str, port: int) -> int | None:
    """Serve ``registry`` at ``http://host:port/metrics`` from a daemon thread.

    Returns the port; None when ``port`` is 0 (metrics off) or already taken: that is
    logged, not fatal, since a worker without metrics still does its work.
    """
    if port <= 0:
        return None
    try:
        server, _ = start_http_server(port, addr=host, registry=registry)
    except OSError:
        log.exception("could not serve metrics", extra={"host": host, "port": port})
        return None
    bound = int(server.server_port)
    log.info("serving metrics", extra={"url": f"http://{host}:{bound}/metrics"})
    return bound


def sample_names(registry: CollectorRegistry) -> set[str]:
    """Every series name ``registry`` would export (``_total``, ``_bucket``… included)."""
    names: set[str] = set()
    for family in registry.collect():
        names |= {sample.name for sample in family.samples}
        names |= _declared(family.type, family.name)
    return names


def _declared(kind: str, name: str) -> set[str]:
    # A labelled metric with no children yet exports no samples; its names are still fixed.
    if kind == "counter":
        return {f"{name}_total", f"{name}_created"}
    if kind == "histogram":
        return {f"{name}_bucket", f"{name}_sum", f"{name}_count", f"{name}_created"}
    return {name}


def all_names() -> set[str]:
    """Every series name any inferq process may export (the alert rules may use only these)."""
    names: set[str] = set()
    for make in (ApiMetrics, WorkerMetrics, SchedulerMetrics):
        registry = CollectorRegistry()
        make(registry)
        names |= sample_names(registry)
    return names
