"""The training task: retrain a model on the ``training`` lane (a GPU worker when present)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from celery import Celery

from inferq.core.messages import TrainRequest
from inferq.core.settings import Settings
from workers.context import WorkerContext
from workers.trainer import run_training

log = logging.getLogger(__name__)


def register(app: Celery, settings: Settings, context: Callable[[], WorkerContext]) -> None:
    """Register ``inferq.train`` on ``app``."""

    @app.task(name=TrainRequest.task, ignore_result=True)
    def train(*args: Any) -> None:
        try:
            message = TrainRequest.from_args(args)
        except ValueError:
            log.warning("dropping a malformed training message", extra={"args": repr(args)[:200]})
            return
        # Failures are recorded on the run row; a redelivered message finds the run
        # started or ended and does nothing.
        run_training(context(), message.model, message.run_id, message.trigger)
