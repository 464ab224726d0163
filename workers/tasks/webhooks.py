"""The webhook task (lane ``webhooks``): one delivery attempt per run, retried with backoff.

Run it on workers of its own (``INFERQ_WORKER_LANES=webhooks``): a slow receiver then holds
up other deliveries, never predictions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery, Task

from inferq.messages import WEBHOOK_TASK
from inferq.queues import queue_name
from inferq.settings import Settings
from inferq.webhooks import backoff_s
from workers.context import WorkerContext
from workers.webhooks import deliver


def register(app: Celery, settings: Settings, context: Callable[[], WorkerContext]) -> None:
    """Register ``inferq.webhook`` on ``app``."""

    @app.task(name=WEBHOOK_TASK, bind=True, ignore_result=True, max_retries=None)
    def webhook(self: Task, job_id: Any, redelivery: Any = False) -> None:
        try_number = self.request.retries + 1
        outcome = deliver(context(), str(job_id), try_number, bool(redelivery))
        if outcome.retry:
            raise self.retry(
                countdown=backoff_s(try_number, settings.webhook_backoff_s),
                queue=queue_name(settings, "webhooks"),
                routing_key="webhooks",
            )
