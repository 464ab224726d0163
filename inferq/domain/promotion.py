"""Promote and roll back model versions: the rules shared by the API, the CLI and the scheduler.

Every activation is recorded (``model_activations``). A rollback undoes the latest activation
that no rollback undid yet and makes the version active before it active again; rolling back
twice walks two steps back, like an undo stack. While an experiment runs on a model its
versions are the experiment's to choose: promote and rollback refuse until it is stopped.
"""

from __future__ import annotations

import dataclasses

from sqlalchemy.orm import Session

from db.activations import (
    live_activations,
    lock_model,
    mark_rolled_back,
    version_by_id,
    version_by_number,
)
from db.experiments import running_experiment
from db.registry import activate_version
from db.tables import Model
from inferq.core.errors import Conflict, NotFound


@dataclasses.dataclass(frozen=True)
class ActivationChange:
    """The outcome of a promote or a rollback."""

    model: str
    version: int
    previous: int | None
    changed: bool

    def to_dict(self) -> dict[str, object]:
        """JSON-ready."""
        return dataclasses.asdict(self)


def _model(session: Session, name: str) -> Model:
    model = lock_model(session, name)
    if model is None:
        raise NotFound(f"No model named {name[:64]!r}.")
    return model


def _no_experiment(session: Session, name: str, action: str) -> None:
    running = running_experiment(session, name)
    if running is not None:
        raise Conflict(
            f"Experiment {running.id} is running on {name!r}; stop it before you {action} "
            f"(POST /v1/experiments/{running.id}/stop)."
        )


def _number(session: Session, version_id: int | None) -> int | None:
    if version_id is None:
        return None
    row = version_by_id(session, version_id)
    return row.version if row else None


def promote(
    session: Session,
    name: str,
    number: int,
    *,
    by: str,
    reason: str | None = None,
    during_experiment: bool = False,
) -> ActivationChange:
    """Make version ``number`` of ``name`` the active one (a no-op when it already is)."""
    model = _model(session, name)
    version = version_by_number(session, model.id, number)
    if version is None:
        raise NotFound(f"Model {name!r} has no version {number}.")
    if not during_experiment:
        _no_experiment(session, name, "promote")
    previous = _number(session, model.active_version_id)
    if model.active_version_id == version.id:
        return ActivationChange(name, number, previous, changed=False)
    activate_version(session, model, version, by=by, reason=reason)
    return ActivationChange(name, number, previous, changed=True)


def rollback(session: Session, name: str, *, by: str) -> ActivationChange:
    """Make the version that was active before the current one active again."""
    model = _model(session, name)
    _no_experiment(session, name, "roll back")
    current = model.active_version_id
    if current is None:
        raise Conflict(f"Model {name!r} has no active version to roll back from.")
    undone, target = [], None
    for activation in live_activations(session, model.id):
        if activation.version_id != current:
            target = activation
            break
        undone.append(activation.id)
    previous = _number(session, current)
    version = version_by_id(session, target.version_id) if target else None
    if version is None:
        raise Conflict(
            f"The history of {name!r} has no version active before v{previous}; "
            "there is nothing to roll back to."
        )
    mark_rolled_back(session, undone, by)
    activate_version(session, model, version, record=False)
    return ActivationChange(name, version.version, previous, changed=True)
