"""A worker process's metrics and batch log: recorded after each batch, served over HTTP.

Each worker is one process (the ``solo`` pool: one model replica per process, one per GPU),
so it serves its own registry on ``INFERQ_METRICS_PORT`` from a daemon thread, and
Prometheus scrapes every worker as its own target (compose: each replica on port 9100;
``inferq up``: a port per worker, listed in ``INFERQ_HOME/prometheus-targets.json``).
That was chosen over a shared multiprocess directory: workers live on many hosts and
containers, and a target per worker keeps ``up`` per worker meaningful.

:func:`after_batch` and :func:`batch_failed` are called by the ``Metrics`` middleware
(workers/middleware.py); like every hook they never fail the batch.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from db.jobs import ClaimedJob, JobResult, StoredResult
from inferq.core.metrics import WorkerMetrics, serve, with_process_metrics
from inferq.core.settings import Settings

if TYPE_CHECKING:
    from workers.context import WorkerContext

log = logging.getLogger(__name__)

UNKNOWN_MODEL = "unknown"


def start(ctx: WorkerContext, settings: Settings) -> int | None:
    """Describe this worker in its metrics and serve them; returns the port (None: off)."""
    metrics = ctx.metrics
    metrics.info.labels(str(ctx.runtime.device), ",".join(settings.worker.lanes)).set(1)
    with_process_metrics(metrics.registry)
    observe_gpu(metrics, ctx.runtime.device)
    return serve(
        metrics.registry, settings.observability.metrics_host, settings.observability.metrics_port
    )


def after_batch(
    ctx: WorkerContext,
    claimed: Sequence[ClaimedJob],
    results: Sequence[JobResult],
    stored: Sequence[StoredResult],
) -> None:
    """Record a stored batch in the metrics, and log it with its job ids."""
    try:
        _record(ctx, claimed, results, stored)
    except Exception:
        log.exception("could not record batch metrics")
    log.info(
        "batch stored",
        extra={
            "worker": ctx.name,
            "job_ids": [str(job.id) for job in claimed],
            "jobs": len(claimed),
            "succeeded": sum(1 for s in stored if s.status == "succeeded"),
            "failed": sum(1 for s in stored if s.status == "failed"),
            "not_stored": len(claimed) - len(stored),
        },
    )


def _record(
    ctx: WorkerContext,
    claimed: Sequence[ClaimedJob],
    results: Sequence[JobResult],
    stored: Sequence[StoredResult],
) -> None:
    metrics = ctx.metrics
    models = {job.id: ctx.runtime.model_name(job.version_id) or UNKNOWN_MODEL for job in claimed}
    for job in claimed:
        wait = (job.started_at - job.created_at) / dt.timedelta(seconds=1)
        metrics.queue_wait.labels(models[job.id]).observe(max(0.0, wait))
    by_id = {r.id: r for r in results}
    for row in stored:
        model = models.get(row.id, UNKNOWN_MODEL)
        metrics.jobs.labels(model, row.status).inc()
        result = by_id.get(row.id)
        if row.status == "failed" and result is not None and result.error:
            metrics.failures.labels(model, str(result.error.get("type", "error"))).inc()
    # The jobs of one predict call share its time and size: count each call once.
    calls = {
        (models[r.id], r.predict_ms, r.batch_size)
        for r in results
        if r.predict_ms is not None and r.batch_size and r.id in models
    }
    for model, predict_ms, size in calls:
        metrics.predict.labels(model).observe(predict_ms / 1000)
        metrics.batch_size.labels(model).observe(size)
    metrics.last_batch.set_to_current_time()
    observe_gpu(metrics, ctx.runtime.device)


def batch_failed(ctx: WorkerContext, reason: str) -> None:
    """Count a batch that failed as a whole (its jobs were handed back); callers log it."""
    ctx.metrics.batch_errors.labels(reason).inc()


def observe_gpu(metrics: WorkerMetrics, device: torch.device) -> None:
    """Record the CUDA memory of ``device`` (nothing on a CPU)."""
    if device.type != "cuda":
        return
    name = str(device)
    metrics.gpu_memory.labels(name, "allocated").set(torch.cuda.memory_allocated(device))
    metrics.gpu_memory.labels(name, "reserved").set(torch.cuda.memory_reserved(device))
    metrics.gpu_memory.labels(name, "peak_allocated").set(torch.cuda.max_memory_allocated(device))
    total = torch.cuda.get_device_properties(device).total_memory
    metrics.gpu_memory.labels(name, "total").set(total)
