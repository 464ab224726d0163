"""``/v1/experiments`` (operator): start A/B or shadow experiments, read their live report, stop.

Experiments belong to models, not to tenants: only operator keys see, start and stop them.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from api.http.auth import require
from api.http.body import json_object
from api.http.validation import check
from api.services import experiments as svc
from api.state import state
from db.experiments import list_experiments
from db.tables import EXPERIMENT_STATUSES
from inferq.core.errors import BadRequest
from inferq.domain.experiment_report import summary
from inferq.domain.experiments import ACTIONS, MAX_ARMS, MODES, start

bp = Blueprint("experiments", __name__, url_prefix="/v1/experiments")

ARM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["version"],
    "properties": {
        "version": {"type": "integer", "minimum": 1},
        "weight": {"type": "number", "exclusiveMinimum": 0, "maximum": 100},
        "name": {"type": "string", "pattern": "^[A-Za-z0-9_.-]{1,32}$"},
    },
}

POLICY_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "min_feedback": {"type": "integer", "minimum": 1, "maximum": 10_000_000},
        "alpha": {"type": "number", "exclusiveMinimum": 0, "maximum": 0.5},
        "action": {"enum": list(ACTIONS)},
        "guard_error_rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
        "guard_min_jobs": {"type": "integer", "minimum": 1},
        "max_feedback": {"type": ["integer", "null"], "minimum": 1},
    },
}

CREATE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["model", "arms"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": 64},
        "name": {"type": "string", "minLength": 1, "maxLength": 128},
        "mode": {"enum": list(MODES)},
        "arms": {"type": "array", "minItems": 2, "maxItems": MAX_ARMS, "items": ARM_SCHEMA},
        "policy": POLICY_SCHEMA,
    },
}

STOP_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"reason": {"type": "string", "minLength": 1, "maxLength": 1000}},
}


@bp.post("")
@require("operator")
def create() -> Response:
    """Start an experiment: 201 with its (empty) report; 409 when one already runs."""
    body = json_object()
    check(CREATE_SCHEMA, body)
    st = state()
    with st.sessions.begin() as session:
        experiment_id = start(session, body, svc.actor()).id
    response = jsonify(svc.report(st, experiment_id).to_dict())
    response.status_code = 201
    response.headers["Location"] = url_for("experiments.show", experiment_id=str(experiment_id))
    return response


@bp.get("")
@require("operator")
def index() -> Response:
    """Experiments without their numbers, newest first: ``?model=NAME``, ``?status=…``."""
    model, status = request.args.get("model"), request.args.get("status")
    if status is not None and status not in EXPERIMENT_STATUSES:
        raise BadRequest(f"status must be one of {', '.join(EXPERIMENT_STATUSES)}.")
    with state().sessions() as session:
        rows = list_experiments(session, model=model, status=status)
    return jsonify({"experiments": [summary(row, name) for row, name in rows]})


@bp.get("/<experiment_id>")
@require("operator")
def show(experiment_id: str) -> Response:
    """The live report: per arm, between arms, and the decision once there is one."""
    st = state()
    return jsonify(svc.report(st, svc.parse_experiment_id(experiment_id)).to_dict())


@bp.post("/<experiment_id>/stop")
@require("operator")
def stop(experiment_id: str) -> Response:
    """End a running experiment now (409 when it already ended)."""
    ident = svc.parse_experiment_id(experiment_id)
    body = json_object(optional=True)
    check(STOP_SCHEMA, body)
    report = svc.stop(state(), ident, svc.actor(), body.get("reason"))
    return jsonify(report.to_dict())
