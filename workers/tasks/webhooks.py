"""The webhook task (lane ``webhooks``): one delivery attempt per run, retried with backoff.

Run it on workers of its own (``INFERQ_WORKER_LANES=webhooks``): a slow receiver then holds
up other deliveries, never predictions.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery, Task

from inferq.core.broker import route
from inferq.core.messages import WebhookRequest
from inferq.core.settings import Settings
from inferq.domain.webhooks import backoff_s
from workers.context import WorkerContext
from workers.delivery import deliver

log = logging.getLogger(__name__)


def register(app: Celery, settings: Settings, context: Callable[[], WorkerContext]) -> None:
    """Register ``inferq.webhook`` on ``app``."""

    @app.task(name=WebhookRequest.task, bind=True, ignore_result=True, max_retries=None)
    def webhook(self: Task, *args: Any) -> None:
        try:
            message = WebhookRequest.from_args(args)
        except ValueError:
            log.warning("dropping a malformed webhook message", extra={"args": repr(args)[:200]})
            return
        try_number = self.request.retries + 1
        outcome = deliver(context(), message.job_id, try_number, message.redelivery)
        if outcome.retry:
            # Not through publish: Celery sends it again with its try count, under the
            # app's RETRY_POLICY (make_celery).
            raise self.retry(
                countdown=backoff_s(try_number, settings.webhooks.webhook_backoff_s),
                **route(settings, message.lane),
            )
