"""The training task: retrain a model on the ``training`` lane (a GPU worker when present)."""

from __future__ import annotations

from collections.abc import Callable

from celery import Celery

from inferq.messages import TRAIN_TASK
from inferq.settings import Settings
from workers.context import WorkerContext
from workers.training import run_training


def register(app: Celery, settings: Settings, context: Callable[[], WorkerContext]) -> None:
    """Register ``inferq.train`` on ``app``."""

    @app.task(name=TRAIN_TASK, ignore_result=True)
    def train(model: str, run_id: str | None = None, trigger: str = "schedule") -> None:
        # Failures are recorded on the run row; a redelivered message finds the run
        # started or ended and does nothing.
        run_training(context(), model, run_id, trigger)
