"""The predict task: messages carry job ids; the jobs themselves live in Postgres.

Messages are buffered by ``celery-batches`` (the maintained library for this) and handed
over as one batch when ``max_batch_size`` have arrived or ``max_batch_delay_ms`` has passed,
so one claim, one ``predict`` call per model version and one commit serve many jobs. The
library acks the whole buffer after the function returns (``acks_late``) and swallows its
exceptions, so ``run_batch`` settles every job itself: success, per-item failure, or release
back to the queue.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from celery import Celery
from celery_batches import SimpleRequest

from inferq.core.messages import PREDICT_TASK
from inferq.core.settings import Settings
from workers.context import WorkerContext
from workers.dynamic_batching import FETCHED_AT, TICK_S, DynamicBatches
from workers.runner import run_batch

log = logging.getLogger(__name__)


def job_ids_of(requests: Sequence[SimpleRequest]) -> list[Any]:
    """Every job id in a batch of buffered messages (malformed messages contribute none)."""
    ids: list[Any] = []
    for request in requests:
        args = request.args
        if args and isinstance(args[0], list):
            ids.extend(args[0])
        else:
            log.warning("dropping a predict message without a list of job ids")
    return ids


def fetched_times(requests: Sequence[SimpleRequest]) -> dict[str, float]:
    """When each job's message reached this worker (Unix seconds), by job id as sent."""
    times: dict[str, float] = {}
    for request in requests:
        at = (request.request_dict or {}).get(FETCHED_AT)
        args = request.args
        if isinstance(at, float) and args and isinstance(args[0], list):
            times.update((str(job_id), at) for job_id in args[0])
    return times


def flush_every(settings: Settings) -> int:
    """Messages per batch. An online message carries one job, so a batch fills from many; a
    batch-lane message already carries a chunk of jobs (``batch_chunk_size``), so a worker of
    that lane alone runs each message as it comes: it holds one chunk at a time, and a kill
    leaves at most that chunk to be redone (and to be run alone, as suspects)."""
    return 1 if settings.worker.lanes == ("batch",) else settings.worker.max_batch_size


def register(app: Celery, settings: Settings, context: Callable[[], WorkerContext]) -> None:
    """Register ``inferq.predict`` on ``app`` as a batching task."""

    @app.task(
        name=PREDICT_TASK,
        base=DynamicBatches,
        ignore_result=True,
        flush_every=flush_every(settings),
        flush_interval=TICK_S,
        idle_gap_s=settings.worker.batch_idle_gap_ms / 1000,
        max_delay_s=settings.worker.max_batch_delay_ms / 1000,
        max_items=settings.worker.max_batch_size,
        # a lull is two quiet gaps long: then the next message has no company coming
        sparse_gap_s=2 * settings.worker.batch_idle_gap_ms / 1000,
    )
    def predict(requests: Sequence[SimpleRequest]) -> None:
        ids = job_ids_of(requests)
        try:
            run_batch(context(), ids, requests, fetched_times(requests))
        except Exception:
            # The claimed jobs were released (or the reconciler will); never lose the worker.
            log.exception("predict batch failed", extra={"job_ids": [str(i) for i in ids]})
