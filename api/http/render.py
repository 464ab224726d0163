"""How resources look on the wire."""

from __future__ import annotations

import datetime as dt
from typing import Any

from db.activations import ActivationView
from db.jobs import JobView
from db.tables import Model, ModelVersion


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _ms(later: dt.datetime | None, earlier: dt.datetime | None) -> float | None:
    if later is None or earlier is None:
        return None
    return round((later - earlier).total_seconds() * 1000, 3)


def job(view: JobView, position: int | None = None, eta_s: float | None = None) -> dict[str, Any]:
    """A job as the API returns it."""
    row = view.job
    body: dict[str, Any] = {
        "id": str(row.id),
        "model": view.model,
        "version": view.version,
        "status": row.status,
        "lane": row.lane,
        "input": row.input,
        "output": row.output,
        "error": row.error,
        "user": row.user,
        "cached": row.cached,
        "attempts": row.attempts,
        "created_at": _iso(row.created_at),
        "fetched_at": _iso(row.fetched_at),
        "started_at": _iso(row.started_at),
        "completed_at": _iso(row.completed_at),
        "expires_at": _iso(row.expires_at),
        "metrics": {
            "queue_ms": _ms(row.started_at, row.created_at),
            "predict_ms": None if row.predict_ms is None else round(row.predict_ms, 3),
            "batch_size": row.batch_size,
            "total_ms": _ms(row.completed_at, row.created_at),
        },
        "worker": row.worker,
    }
    if row.experiment_id is not None:
        body["experiment"] = {"id": str(row.experiment_id), "arm": row.arm}
    if row.status == "queued":
        body["position"] = position
        body["eta_s"] = eta_s
    if row.cancel_requested and row.status == "running":
        body["cancel_requested"] = True
    return body


def version(row: ModelVersion) -> dict[str, Any]:
    """A model version without its weights."""
    return {
        "version": row.version,
        "status": row.status,
        "sha256": row.sha256,
        "size_bytes": row.size_bytes,
        "artifact": {"uri": row.artifact_uri, "kind": row.artifact_kind, "files": row.files},
        "metrics": row.metrics,
        "created_by": row.created_by,
        "created_at": _iso(row.created_at),
    }


def model(row: Model, versions: list[ModelVersion]) -> dict[str, Any]:
    """A model with its versions and the one now serving."""
    active = next((v for v in versions if v.id == row.active_version_id), None)
    return {
        "name": row.name,
        "handler": row.handler,
        "active_version": active.version if active else None,
        "input_schema": row.input_schema,
        "label_schema": row.label_schema,
        "config": row.config,
        "versions": [version(v) for v in versions],
        "created_at": _iso(row.created_at),
    }


def activation(row: ActivationView) -> dict[str, Any]:
    """One entry of a model's activation history."""
    return {
        "version": row.version,
        "previous_version": row.previous_version,
        "activated_by": row.activated_by,
        "reason": row.reason,
        "activated_at": _iso(row.activated_at),
        "rolled_back_at": _iso(row.rolled_back_at),
        "rolled_back_by": row.rolled_back_by,
    }
