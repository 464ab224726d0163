"""Models and their versions: registration, lookup, activation."""

from __future__ import annotations

import dataclasses
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from db.tables import Model, ModelActivation, ModelVersion


@dataclasses.dataclass(frozen=True)
class ServingInfo:
    """What the API needs to accept a job for a model, without loading any weights."""

    model_id: int
    name: str
    input_schema: dict[str, Any]
    label_schema: dict[str, Any] | None
    active_version_id: int | None
    active_version: int | None
    active_sha256: str | None
    config: dict[str, Any]


@dataclasses.dataclass(frozen=True)
class LoadableVersion:
    """What a worker needs to fetch and load a version."""

    version_id: int
    model_name: str
    handler: str
    version: int
    artifact_uri: str
    artifact_kind: str
    sha256: str
    files: list[dict[str, Any]]
    config: dict[str, Any]


def ensure_model(
    session: Session,
    name: str,
    handler: str,
    input_schema: dict[str, Any],
    config: dict[str, Any],
    label_schema: dict[str, Any] | None = None,
    tensor_spec: dict[str, Any] | None = None,
) -> Model:
    """Register ``name`` (or refresh its handler, schemas, config and tensor spec)."""
    model = session.scalars(select(Model).where(Model.name == name)).one_or_none()
    if model is None:
        model = Model(name=name, handler=handler)
        session.add(model)
    model.handler, model.input_schema, model.label_schema = handler, input_schema, label_schema
    model.config, model.tensor_spec = config, tensor_spec
    session.flush()
    return model


def add_version(
    session: Session,
    model: Model,
    *,
    artifact_uri: str,
    artifact_kind: str,
    sha256: str,
    size_bytes: int,
    files: list[dict[str, Any]],
    metrics: dict[str, Any],
    created_by: str,
    activate: bool,
) -> ModelVersion:
    """Store a new version of ``model`` (numbered after the last); optionally make it active."""
    # Serialise version numbering per model: two trainings at once must not collide.
    session.execute(select(Model.id).where(Model.id == model.id).with_for_update())
    last = session.scalar(
        select(func.max(ModelVersion.version)).where(ModelVersion.model_id == model.id)
    )
    row = ModelVersion(
        model_id=model.id,
        version=(last or 0) + 1,
        artifact_uri=artifact_uri,
        artifact_kind=artifact_kind,
        sha256=sha256,
        size_bytes=size_bytes,
        files=files,
        metrics=metrics,
        status="candidate",
        created_by=created_by,
    )
    session.add(row)
    session.flush()
    if activate:
        activate_version(session, model, row)
    return row


def activate_version(
    session: Session,
    model: Model,
    version: ModelVersion,
    *,
    by: str | None = None,
    reason: str | None = None,
    record: bool = True,
) -> None:
    """Make ``version`` the one new jobs of ``model`` are served by; unless told not to,
    record it in the activation history (what a rollback walks back)."""
    session.execute(
        update(ModelVersion)
        .where(ModelVersion.model_id == model.id, ModelVersion.status == "active")
        .values(status="retired")
    )
    previous = model.active_version_id
    version.status = "active"
    model.active_version_id = version.id
    if record:  # a rollback returns to an activation already in the history: no new row
        session.add(
            ModelActivation(
                model_id=model.id,
                version_id=version.id,
                previous_version_id=previous,
                activated_by=(by or version.created_by)[:128],
                reason=reason,
            )
        )
    session.flush()


def serving_info(session: Session, name: str) -> ServingInfo | None:
    """The model named ``name`` and its active version number, or None."""
    row = session.execute(
        select(
            Model.id,
            Model.name,
            Model.input_schema,
            Model.label_schema,
            Model.active_version_id,
            ModelVersion.version,
            ModelVersion.sha256,
            Model.config,
        )
        .outerjoin(ModelVersion, ModelVersion.id == Model.active_version_id)
        .where(Model.name == name)
    ).one_or_none()
    return ServingInfo(*row) if row else None


def loadable_version(session: Session, version_id: int) -> LoadableVersion | None:
    """Everything a worker needs to load ``version_id``."""
    row = session.execute(
        select(
            ModelVersion.id,
            Model.name,
            Model.handler,
            ModelVersion.version,
            ModelVersion.artifact_uri,
            ModelVersion.artifact_kind,
            ModelVersion.sha256,
            ModelVersion.files,
            Model.config,
        )
        .join(Model, Model.id == ModelVersion.model_id)
        .where(ModelVersion.id == version_id)
    ).one_or_none()
    return LoadableVersion(*row) if row else None


def get_model(session: Session, name: str) -> Model | None:
    """The model named ``name``, or None."""
    return session.scalars(select(Model).where(Model.name == name)).one_or_none()


def list_models(session: Session) -> list[Model]:
    """Every model, by name."""
    return list(session.scalars(select(Model).order_by(Model.name)))


def model_names(session: Session, limit: int = 50) -> list[str]:
    """The names of the models there are, in order (at most ``limit``)."""
    return list(session.scalars(select(Model.name).order_by(Model.name).limit(limit)))


def list_versions(session: Session, model_ids: list[int]) -> list[ModelVersion]:
    """Versions of the given models, oldest first."""
    return list(
        session.scalars(
            select(ModelVersion)
            .where(ModelVersion.model_id.in_(model_ids))
            .order_by(ModelVersion.model_id, ModelVersion.version)
        )
    )
