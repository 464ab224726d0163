"""``/v1/models``: the models, their versions, metrics and the active version."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify

from api import render
from api.auth import require
from api.state import state
from db.registry import get_model, list_models, list_versions
from inferq.errors import NotFound

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
    """One model with its versions."""
    with state().sessions() as session:
        model = get_model(session, name)
        if model is None:
            raise NotFound(f"No model named {name[:64]!r}.")
        versions = list_versions(session, [model.id])
    return jsonify(render.model(model, versions))
