"""Training runs: ``POST /v1/models/{name}/retrain`` (operator) starts one now,
``GET /v1/training-runs/{id}`` shows its progress, metrics and outcome.

Training runs belong to models, not to tenants: any key that may read models sees them.
"""

from __future__ import annotations

import uuid

from flask import Blueprint, Response, jsonify, url_for

from api.http.auth import require
from api.services.experiments import actor
from api.state import state
from db.training import get_run, run_dict
from inferq.core.broker import publish
from inferq.core.errors import NotFound
from inferq.core.messages import TrainRequest
from inferq.domain.training import request_run

bp = Blueprint("training", __name__)


@bp.post("/v1/models/<name>/retrain")
@require("operator")
def retrain(name: str) -> Response:
    """Start a training run of ``name``: 202 with the run; 409 while one is open."""
    st = state()
    with st.sessions.begin() as session:
        run_id = request_run(session, st.settings, name, trigger="manual", requested_by=actor())
    publish(st.celery, st.settings, TrainRequest(name, str(run_id), "manual"))
    response = show(str(run_id))
    response.status_code = 202
    response.headers["Location"] = url_for("training.show", run_id=str(run_id))
    return response


@bp.get("/v1/training-runs/<run_id>")
@require("read")
def show(run_id: str) -> Response:
    """One training run."""
    try:
        parsed = uuid.UUID(run_id)
    except ValueError:
        raise NotFound(f"There is no training run {run_id[:64]!r}.") from None
    with state().sessions() as session:
        found = get_run(session, parsed)
        if found is None:
            raise NotFound(f"There is no training run {run_id[:64]!r}.")
        body = run_dict(*found)
    return jsonify(body)
