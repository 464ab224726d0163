"""``/v1/models``: the models, their versions, metrics and the active version; register a
model and upload or name a version's artifact, promote and roll back (operator)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from api.http import render
from api.http.auth import require
from api.http.body import drain_upload, json_object
from api.http.validation import check
from api.services import models as svc
from api.services.experiments import actor
from api.state import state
from db.activations import history
from db.experiments import running_experiment
from db.registry import get_model, list_models, list_versions
from db.training import latest_run, run_dict, version_accuracy
from inferq.core.errors import NotFound
from inferq.domain.promotion import promote, rollback
from inferq.domain.registration import NAME_PATTERN

bp = Blueprint("models", __name__, url_prefix="/v1/models")

MODEL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["name", "handler"],
    "properties": {
        "name": {"type": "string", "pattern": NAME_PATTERN},
        "handler": {
            "type": "string",
            "maxLength": 255,
            "pattern": r"^[A-Za-z_][A-Za-z0-9_.]*(:[A-Za-z_][A-Za-z0-9_]*)?$",
        },
        "config": {"type": "object"},
    },
}
VERSION_BY_URI_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["uri"],
    "properties": {
        "uri": {"type": "string", "minLength": 1, "maxLength": 2048},
        "activate": {"type": "boolean"},
    },
}


@bp.post("")
@require("operator")
def create() -> Response:
    """Register a model served by an installed handler (201; 200 when it existed)."""
    body = json_object()
    check(MODEL_SCHEMA, body)
    st = state()
    model, created = svc.create_model(st, body["name"], body["handler"], body.get("config") or {})
    with st.sessions() as session:
        versions = list_versions(session, [model.id])
    response = jsonify(render.model(model, versions))
    response.status_code = 201 if created else 200
    response.headers["Location"] = url_for("models.show", name=model.name)
    return response


@bp.post("/<name>/versions")
@require("operator")
def add_version(name: str) -> Response:
    """Add a version from an uploaded artifact, or from one the store holds (201)."""
    st = state()
    with st.sessions() as session:
        if get_model(session, name) is None:  # before reading a byte of an upload
            raise NotFound(f"No model named {name[:64]!r}; create it first (POST /v1/models).")
    if (request.mimetype or "") == "application/json":
        body = json_object()
        check(VERSION_BY_URI_SCHEMA, body)
        artifact, activate = svc.artifact_at(st, body["uri"]), bool(body.get("activate"))
    else:
        activate = request.args.get("activate", "").lower() in ("1", "true", "yes")
        artifact = svc.receive_artifact(st)
    version = svc.add_version(st, name, artifact, activate=activate, created_by=actor())
    response = jsonify(render.version(version))
    response.status_code = 201
    response.headers["Location"] = url_for("models.show", name=name)
    return response


@bp.after_request
def finish_reading_a_refused_upload(response: Response) -> Response:
    """An upload refused before its end is read to its end before the answer goes out
    (nginx streams it on and would otherwise reuse the connection mid-body)."""
    if request.endpoint == "models.add_version" and response.status_code >= 400:
        drain_upload(response, state().settings.artifacts.max_artifact_bytes)
    return response


@bp.get("")
@require("read")
def index() -> Response:
    """Every model with its versions."""
    with state().sessions() as session:
        models = list_models(session)
        versions = list_versions(session, [m.id for m in models])
    return jsonify(
        {"models": [render.model(m, [v for v in versions if v.model_id == m.id]) for m in models]}
    )


@bp.get("/<name>")
@require("read")
def show(name: str) -> Response:
    """One model with its versions, its activation history and its running experiment."""
    with state().sessions() as session:
        model = get_model(session, name)
        if model is None:
            raise NotFound(f"No model named {name[:64]!r}.")
        versions = list_versions(session, [model.id])
        activations = history(session, model.id)
        running = running_experiment(session, name)
        quality, training = _quality(session, model), latest_run(session, model.id)
        training_body = run_dict(training, name) if training else None
    body = render.model(model, versions)
    body["history"] = [render.activation(a) for a in activations]
    body["experiment"] = str(running.id) if running else None
    body["quality"] = quality
    body["training"] = training_body
    return jsonify(body)


def _quality(session: Any, model: Any) -> dict[str, Any] | None:
    """The active version's accuracy from feedback over the quality window."""
    if model.active_version_id is None:
        return None
    window = state().settings.observability.quality_window_s
    since = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=window)
    judged, correct = version_accuracy(session, model.active_version_id, since)
    accuracy = round(correct / judged, 4) if judged else None
    return {"window_s": window, "judged": judged, "correct": correct, "accuracy": accuracy}


REASON_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 1000}},
}


@bp.post("/<name>/versions/<int:version>/promote")
@require("operator")
def promote_version(name: str, version: int) -> Response:
    """Make a version active (operator); 409 while an experiment runs on the model."""
    body = json_object(optional=True)
    check(REASON_SCHEMA, body)
    with state().sessions.begin() as session:
        change = promote(session, name, version, by=actor(), reason=body.get("reason"))
    return jsonify(change.to_dict())


@bp.post("/<name>/rollback")
@require("operator")
def rollback_version(name: str) -> Response:
    """Make the previously active version active again (operator)."""
    with state().sessions.begin() as session:
        change = rollback(session, name, by=actor())
    return jsonify(change.to_dict())
