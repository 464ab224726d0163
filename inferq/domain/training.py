"""Starting a training run from the API or the CLI: open its row, send it to the training lane.

Beat sends the same task without a run id (the worker opens the run), so a schedule needs no
database connection in the beat process.
"""

from __future__ import annotations

import uuid

from sqlalchemy.orm import Session

from db.registry import get_model
from db.training import open_run, open_run_of
from inferq.core.errors import Conflict, NotFound
from inferq.core.settings import Settings

TRIGGERS = ("manual", "schedule", "drift")


def request_run(
    session: Session, settings: Settings, model: str, *, trigger: str, requested_by: str
) -> uuid.UUID:
    """Open a queued run of ``model`` (commit, then publish a ``TrainRequest``).

    Raises NotFound for an unknown model, Conflict while the model has an open run.
    """
    row = get_model(session, model)
    if row is None:
        raise NotFound(f"There is no model named {model[:64]!r}.")
    run = open_run(
        session,
        row.id,
        trigger=trigger,
        requested_by=requested_by,
        stale_after_s=settings.retraining.training_time_limit_s,
    )
    if run is None:
        existing = open_run_of(session, row.id)
        raise Conflict(
            f"Model {model!r} is already training" + (f" (run {existing.id})." if existing else ".")
        )
    return run.id
