"""The activation history of models: what promote writes and rollback walks back."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session, aliased

from db.tables import Model, ModelActivation, ModelVersion


@dataclasses.dataclass(frozen=True)
class ActivationView:
    """One entry of a model's history, with version numbers instead of ids."""

    id: int
    version: int
    previous_version: int | None
    activated_by: str
    reason: str | None
    activated_at: dt.datetime
    rolled_back_at: dt.datetime | None
    rolled_back_by: str | None


def lock_model(session: Session, name: str) -> Model | None:
    """The model named ``name``, locked until commit: activations of one model are serial."""
    return session.scalars(select(Model).where(Model.name == name).with_for_update()).one_or_none()


def version_by_number(session: Session, model_id: int, number: int) -> ModelVersion | None:
    """Version ``number`` of the model or None."""
    return session.scalars(
        select(ModelVersion).where(
            ModelVersion.model_id == model_id, ModelVersion.version == number
        )
    ).one_or_none()


def version_by_id(session: Session, version_id: int) -> ModelVersion | None:
    """The version with this id or None."""
    return session.scalars(select(ModelVersion).where(ModelVersion.id == version_id)).one_or_none()


def live_activations(session: Session, model_id: int, limit: int = 100) -> list[ModelActivation]:
    """The model's activations that no rollback undid, newest first."""
    return list(
        session.scalars(
            select(ModelActivation)
            .where(ModelActivation.model_id == model_id, ModelActivation.rolled_back_at.is_(None))
            .order_by(ModelActivation.id.desc())
            .limit(limit)
        )
    )


def mark_rolled_back(session: Session, activation_ids: Sequence[int], by: str) -> None:
    """Record that a rollback undid these activations."""
    session.execute(
        update(ModelActivation)
        .where(ModelActivation.id.in_(list(activation_ids)))
        .values(rolled_back_at=func.now(), rolled_back_by=by[:128])
    )


def history(session: Session, model_id: int, limit: int = 20) -> list[ActivationView]:
    """The model's latest activations, newest first, rolled back ones included."""
    previous = aliased(ModelVersion)
    rows = session.execute(
        select(
            ModelActivation.id,
            ModelVersion.version,
            previous.version,
            ModelActivation.activated_by,
            ModelActivation.reason,
            ModelActivation.activated_at,
            ModelActivation.rolled_back_at,
            ModelActivation.rolled_back_by,
        )
        .join(ModelVersion, ModelVersion.id == ModelActivation.version_id)
        .outerjoin(previous, previous.id == ModelActivation.previous_version_id)
        .where(ModelActivation.model_id == model_id)
        .order_by(ModelActivation.id.desc())
        .limit(limit)
    )
    return [ActivationView(*row) for row in rows]
