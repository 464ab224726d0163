"""``/v1/models``: the models, their versions, metrics and the active version; promote and
roll back (admin)."""

from __future__ import annotations

import datetime as dt
from typing import Any

from flask import Blueprint, Response, jsonify

from api.http import render
from api.http.auth import require
from api.http.body import json_object
from api.http.validation import check
from api.services.experiments import actor
from api.state import state
from db.activations import history
from db.experiments import running_experiment
from db.registry import get_model, list_models, list_versions
from db.training import latest_run, run_dict, version_accuracy
from inferq.core.errors import NotFound
from inferq.domain.promotion import promote, rollback

bp = Blueprint("models", __name__, url_prefix="/v1/models")


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
@require("admin")
def promote_version(name: str, version: int) -> Response:
    """Make a version active (admin); 409 while an experiment runs on the model."""
    body = json_object(optional=True)
    check(REASON_SCHEMA, body)
    with state().sessions.begin() as session:
        change = promote(session, name, version, by=actor(), reason=body.get("reason"))
    return jsonify(change.to_dict())


@bp.post("/<name>/rollback")
@require("admin")
def rollback_version(name: str) -> Response:
    """Make the previously active version active again (admin)."""
    with state().sessions.begin() as session:
        change = rollback(session, name, by=actor())
    return jsonify(change.to_dict())
