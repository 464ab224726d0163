"""``/v1/jobs``: submit, read (long-poll), cancel, feedback."""

from __future__ import annotations

from contextlib import nullcontext
from typing import Any

from flask import Blueprint, Response, jsonify, request, url_for

from api.http import render, timing
from api.http.auth import current_principal, require
from api.http.body import json_object
from api.http.metrics import Submitted, note_submitted
from api.http.ratelimit import deferred_token
from api.http.validation import check
from api.services import experiments as experiments_service
from api.services import jobs as svc
from api.services import position as whereis
from api.services.webhooks import finished as webhooks_finished
from api.state import state
from db.feedback import add_feedback
from db.jobs import cancel_job, get_job_view
from db.tables import TERMINAL_STATUSES
from inferq.core.errors import Conflict, InvalidInput
from inferq.core.settings import LANES
from inferq.core.status import announce

bp = Blueprint("jobs", __name__, url_prefix="/v1/jobs")

SUBMIT_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["model", "input"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": 64},
        "input": {"type": "object"},
        "lane": {"enum": [lane for lane in LANES if lane in ("online", "batch")]},
        "user": {"type": "string", "minLength": 1, "maxLength": 256},
        "webhook": {"type": "string", "format": "uri", "minLength": 1, "maxLength": 2048},
    },
}

FEEDBACK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "properties": {
        "label": {},
        "correct": {"type": "boolean"},
        "score": {"type": "number", "minimum": -1e308, "maximum": 1e308},  # a float's range
        "comment": {"type": "string", "maxLength": 4000},
    },
}


def _job_response(view: svc.JobView, status: int) -> Response:
    body = render.job(view)
    if status == 200:
        body.update(whereis.locate(state(), view))  # position, eta_s, stuck
    response = jsonify(body)
    response.status_code = status
    return response


@bp.post("")
@require("submit", take_token=False)
def submit() -> Response:
    """Accept a job: 202 while pending, 200 when finished within ``Prefer: wait``."""
    body = json_object()
    check(SUBMIT_SCHEMA, body)
    st = state()
    token = deferred_token()  # taken with the result-cache lookup, or before Postgres is read
    info = svc.model_for(st, body["model"], before_reading=token.take_now)
    check(info.input_schema, body["input"], "/input")
    wait = svc.prefer_wait(request.headers.get("Prefer"), st.settings.api.max_wait_s)
    expires_in = svc.cancel_after(request.headers.get("Cancel-After"))
    view, replayed = svc.accept(st, current_principal(), info, body, expires_in, token)
    timing.step("accept")
    job_id = str(view.job.id)
    note_submitted(Submitted(job_id, view.model, view.job.lane, view.job.cached, replayed))
    if not view.job.cached:
        with st.waiter.expect(job_id) if wait else nullcontext() as signal:
            if not replayed:
                svc.publish(st, view)
                timing.step("publish")
            if signal is not None:
                view = svc.wait_until_terminal(st, view, wait, signal)
                timing.step("wait")
    if not replayed:
        experiments_service.mirror(st, view)  # shadow mode: the other arms run on a copy
    done = view.job.status in TERMINAL_STATUSES
    response = jsonify(render.job(view))
    response.status_code = 200 if done else 202
    if not done:
        st.recent.keep(view)  # for the long-poll that follows
    response.headers["Location"] = url_for("jobs.get_job", job_id=job_id)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    if wait:
        response.headers["Preference-Applied"] = f"wait={wait:g}"
    return response


@bp.get("/<job_id>")
@require("read")
def get_job(job_id: str) -> Response:
    """The job; ``?wait=N`` holds the request until it is terminal, answering
    within N seconds (svc.wait_deadline)."""
    st = state()
    wait = svc.query_wait(request.args.get("wait"), st.settings.api.max_wait_s)
    ident = svc.parse_job_id(job_id)
    tenant = current_principal().tenant_id
    if not wait:
        return _job_response(svc.load(st, ident, tenant, with_ahead=True), 200)
    with st.waiter.expect(str(ident)) as signal:
        view = svc.load_to_wait(st, ident, tenant)
        timing.step("read")
        view = svc.wait_until_terminal(st, view, wait, signal)
        timing.step("wait")
    response = _job_response(view, 200)
    st.recent.keep(view)  # an open job's, for the client's next long-poll
    return response


@bp.post("/<job_id>/cancel")
@require("submit")
def cancel(job_id: str) -> Response:
    """Cancel: a queued job never runs; a running one is marked and its result discarded."""
    st = state()
    ident = svc.parse_job_id(job_id)
    tenant = current_principal().tenant_id
    with st.sessions.begin() as session:
        before = get_job_view(session, ident, tenant)
        if before is None:
            raise svc.missing(st, ident)
        if before.job.status in ("succeeded", "failed"):
            raise Conflict(f"Job {ident} already {before.job.status}; it cannot be canceled.")
        cancel_job(session, ident, tenant)
    view = svc.load(st, ident, tenant)
    if view.job.status == "canceled":
        announce(st.redis, st.settings, [(str(ident), "canceled")])
        webhooks_finished(st, [ident])
    return _job_response(view, 200)


@bp.post("/<job_id>/feedback")
@require("submit")
def feedback(job_id: str) -> tuple[Response, int]:
    """Record what the user says about a finished job's output."""
    st = state()
    ident = svc.parse_job_id(job_id)
    body = json_object()
    check(FEEDBACK_SCHEMA, body)
    view = svc.load(st, ident, current_principal().tenant_id)
    if view.job.status not in TERMINAL_STATUSES:
        raise Conflict(f"Job {ident} is still {view.job.status}; send feedback once it finishes.")
    if "label" in body:
        info = svc.model_for(st, view.model)
        if info.label_schema is None:
            raise InvalidInput(f"Model {view.model!r} does not take labels as feedback.")
        check(info.label_schema, body["label"], "/label")
    with st.sessions.begin() as session:
        row = add_feedback(
            session,
            job_id=ident,
            job_created_at=view.job.created_at,
            tenant_id=view.job.tenant_id,
            label=body.get("label"),
            correct=body.get("correct"),
            score=body.get("score"),
            comment=body.get("comment"),
        )
    if row is None:  # retention took the job a moment ago
        raise svc.missing(st, ident)
    return jsonify({"id": str(row.id), "job_id": str(ident), **body}), 201
