"""Celery tasks, one module per domain; ``register_all`` binds them to an app."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from inferq.core.settings import Settings
from workers.context import WorkerContext
from workers.tasks import predict, shadow, training
from workers.tasks import webhooks as webhook_tasks


def register_all(app: Celery, settings: Settings, context: Callable[[], WorkerContext]) -> None:
    """Register every worker task on ``app``; ``context`` gives the process's resources."""
    predict.register(app, settings, context)
    webhook_tasks.register(app, settings, context)
    shadow.register(app, settings, context)
    training.register(app, settings, context)
