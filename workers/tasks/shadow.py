"""The shadow task: run a shadow experiment's other arms on copies of served jobs.

Buffered by ``celery-batches`` like predict, so copies run in batches per version.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence

from celery import Celery
from celery_batches import Batches, SimpleRequest

from inferq.core.messages import SHADOW_TASK, ShadowRequest
from inferq.core.settings import Settings
from workers.context import WorkerContext
from workers.middleware import Batch, around
from workers.shadow_runs import run_shadows

log = logging.getLogger(__name__)


def shadow_requests(requests: Sequence[SimpleRequest]) -> list[ShadowRequest]:
    """The well-formed shadow requests in a batch of buffered messages."""
    parsed = []
    for request in requests:
        try:
            parsed.append(ShadowRequest.from_args(request.args or ()))
        except ValueError:
            log.warning("dropping a malformed shadow message")
    return parsed


def register(app: Celery, settings: Settings, context: Callable[[], WorkerContext]) -> None:
    """Register ``inferq.shadow`` on ``app`` as a batching task."""

    @app.task(
        name=SHADOW_TASK,
        base=Batches,
        ignore_result=True,
        flush_every=settings.worker.max_batch_size,
        flush_interval=settings.worker.max_batch_delay_ms / 1000,
    )
    def shadow(requests: Sequence[SimpleRequest]) -> None:
        try:
            ctx = context()
            with around(ctx, Batch("shadow", requests)):
                run_shadows(ctx, shadow_requests(requests))
        except Exception:  # best effort: a lost copy costs one comparison, never a job
            log.exception("shadow batch failed")
