"""``/v1/batches``: submit many inputs at once, follow their progress, read their results.

Submit JSON Lines (``Content-Type: application/x-ndjson``, one input object per line, the
model in ``?model=``), streamed and never held whole, or a JSON object ``{"model", "inputs"}``.
"""

from __future__ import annotations

from flask import Blueprint, Response, jsonify, request, url_for

from api.http.auth import current_principal, require
from api.http.body import drain_upload
from api.services import batches as svc
from api.state import state
from inferq.core.errors import BadRequest, InvalidInput, UnsupportedMediaType

bp = Blueprint("batches", __name__, url_prefix="/v1/batches")

RESULT_FORMATS = {"jsonl": "application/x-ndjson", "csv": "text/csv"}


@bp.post("")
@require("submit")
def submit() -> Response:
    """Create a batch: 202 with its progress and ``Location``, once every line passed."""
    st = state()
    tenant = current_principal().tenant_id
    mimetype = request.mimetype or ""
    if mimetype in svc.JSONL_TYPES:
        model = request.args.get("model", "")
        if not model:
            raise InvalidInput(
                "Name the model of a JSON Lines upload: POST /v1/batches?model=NAME.",
                errors=[{"pointer": "?model", "detail": "required"}],
            )
        info = svc.admit(st, tenant, model)  # before reading a byte of the upload
        view = svc.accept(st, tenant, info, svc.jsonl_lines(st), form="jsonl")
    elif mimetype == "application/json" or mimetype.endswith("+json"):
        model, lines = svc.json_form(st)
        info = svc.admit(st, tenant, model)
        view = svc.accept(st, tenant, info, lines, form="json")
    else:
        raise UnsupportedMediaType(
            "Send JSON Lines ('Content-Type: application/x-ndjson' and ?model=NAME) or a JSON "
            'object {"model": NAME, "inputs": [...]} (\'Content-Type: application/json\').'
        )
    response = jsonify(svc.report(st, view))
    response.status_code = 202
    response.headers["Location"] = url_for("batches.show", batch_id=str(view.batch.id))
    return response


@bp.after_request
def finish_reading_a_refused_upload(response: Response) -> Response:
    """An upload refused before its end (a bad line, a wrong model, a missing scope) is read
    to its end before the answer goes out, so a keep-alive connection (from nginx, or from a
    client that reaches the node directly) is never reused mid-body."""
    if request.endpoint == "batches.submit" and response.status_code >= 400:
        drain_upload(response, state().settings.batches.max_batch_bytes)
    return response


@bp.get("/<batch_id>")
@require("read")
def show(batch_id: str) -> Response:
    """The batch: counts by status, throughput and ETA."""
    st = state()
    view = svc.load(st, svc.parse_batch_id(batch_id), current_principal().tenant_id)
    return jsonify(svc.report(st, view))


@bp.get("/<batch_id>/results")
@require("read")
def results(batch_id: str) -> Response:
    """Every item in input order, streamed: JSON Lines, or CSV with ``?format=csv``."""
    st = state()
    fmt = request.args.get("format", "jsonl")
    if fmt not in RESULT_FORMATS:
        raise BadRequest(f"format must be one of {sorted(RESULT_FORMATS)}, not {fmt[:16]!r}.")
    view = svc.load(st, svc.parse_batch_id(batch_id), current_principal().tenant_id)
    response = Response(svc.results(st, view.batch.id, fmt), mimetype=RESULT_FORMATS[fmt])
    filename = f"batch-{view.batch.id}.{fmt}"
    response.headers["Content-Disposition"] = f'attachment; filename="{filename}"'
    response.headers["X-Batch-Total"] = str(view.batch.total)
    return response


@bp.post("/<batch_id>/cancel")
@require("submit")
def cancel(batch_id: str) -> Response:
    """Cancel: queued items never run; running ones finish as canceled."""
    st = state()
    body = svc.cancel(st, svc.parse_batch_id(batch_id), current_principal().tenant_id)
    return jsonify(body)
