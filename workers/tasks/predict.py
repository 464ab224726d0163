"""The predict task: a message carries job ids; the jobs themselves live in Postgres."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from celery import Celery

from inferq.messages import PREDICT_TASK
from workers.batch import run_batch
from workers.context import WorkerContext


def register(app: Celery, context: Callable[[], WorkerContext]) -> None:
    """Register ``inferq.predict`` on ``app``."""

    @app.task(name=PREDICT_TASK, ignore_result=True)
    def predict(job_ids: list[Any]) -> None:
        run_batch(context(), job_ids if isinstance(job_ids, list) else [])
