"""The batch operations behind the routes: accept an upload, publish its items, report.

An upload is taken in two passes. The first reads it as it streams in, checks every line
against the model's input schema and spools the accepted lines (memory, then a temporary
file). Only when every line passed does the second pass open one transaction that creates
the batch and COPYs its items in chunks: a bad line, a wrong model or an oversized upload
leaves nothing behind. The items are then published in chunks on the batch lane, where the
online path's machinery (guarded claims, retries, the reconciler) takes them as it takes any
job. The result cache is consulted per item at insert: an input it knows is born finished.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import tempfile
import uuid
from collections.abc import Iterator
from typing import IO, Any

import redis
from flask import request

from api.http.jsonl import Limits, Line, bad_line, read_lines
from api.http.validation import check, fast_validator
from api.services import quotas
from api.services.jobs import expired, model_for
from api.state import ApiState
from db.batches import (
    BatchView,
    Item,
    Progress,
    cancel_batch,
    copy_items,
    create_batch,
    get_batch_view,
    mark_completed,
    progress,
    results_page,
    set_cached_count,
)
from db.engine import retry_on_disconnect
from db.fastjson import unstorable
from db.jobs import mark_unpublished
from db.registry import ServingInfo
from inferq.core.broker import publish as publish_message
from inferq.core.errors import BadRequest, Conflict, Gone, InvalidInput, NotFound, PayloadTooLarge
from inferq.core.messages import PredictRequest
from inferq.domain.result_cache import cache_key

log = logging.getLogger(__name__)

LANE = "batch"
JSONL_TYPES = frozenset(
    {
        "application/x-ndjson",
        "application/jsonl",
        "application/x-jsonlines",
        "application/jsonlines",
    }
)
#: The JSON form (``{"model", "inputs"}``) is parsed whole, so it is held to less than JSONL.
JSON_FORM_MAX_BYTES = 32 * 1024 * 1024
#: Items per COPY (and per Redis MGET of the cache), all in the one transaction.
INSERT_CHUNK = 1000
SPOOL_IN_MEMORY_BYTES = 8 * 1024 * 1024
#: Items per page read from Postgres while streaming results.
RESULTS_PAGE = 2000
NO_KEY = b"-"

JSON_FORM_SCHEMA: dict[str, Any] = {
    "type": "object",
    "additionalProperties": False,
    "required": ["model", "inputs"],
    "properties": {
        "model": {"type": "string", "minLength": 1, "maxLength": 64},
        "inputs": {"type": "array", "minItems": 1},
    },
}


def parse_batch_id(raw: str) -> uuid.UUID:
    """``raw`` as a UUID, or a 400 problem."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise BadRequest(f"Batch ids are UUIDs; {raw[:64]!r} is not one.") from None


def limits(st: ApiState) -> Limits:
    """An upload's limits: a line may be as large as one job's body."""
    batches = st.settings.batches
    return Limits(batches.max_batch_bytes, batches.max_batch_items, st.settings.api.max_body_bytes)


def upload_stream(max_bytes: int) -> IO[bytes]:
    """The request body as a stream, allowed up to ``max_bytes`` (not the JSON body limit)."""
    request.max_content_length = max_bytes
    return request.stream  # raises RequestEntityTooLarge (413) for a Content-Length above


def json_form(st: ApiState) -> tuple[str, Iterator[Line]]:
    """The model and the inputs of a ``{"model", "inputs": [...]}`` body, as lines."""
    from api.http.body import json_object

    request.max_content_length = min(st.settings.batches.max_batch_bytes, JSON_FORM_MAX_BYTES)
    body = json_object()
    check(JSON_FORM_SCHEMA, body)
    inputs = body["inputs"]
    if len(inputs) > st.settings.batches.max_batch_items:
        raise PayloadTooLarge(
            f"A batch holds at most {st.settings.batches.max_batch_items} inputs."
        )
    return body["model"], _json_lines(inputs)


def _json_lines(inputs: list[Any]) -> Iterator[Line]:
    for number, value in enumerate(inputs, start=1):
        if not isinstance(value, dict):
            raise _item_problem(number, "must be a JSON object", "")
        problem = unstorable(value)
        if problem:
            raise _item_problem(number, problem, "")
        yield Line(number, json.dumps(value, separators=(",", ":")), value)


def _item_problem(number: int, detail: str, pointer: str) -> InvalidInput:
    # In the JSON form an input is named by its place in "inputs" (from 0).
    where = f"/inputs/{number - 1}{pointer}"
    return InvalidInput(f"{where} {detail}", errors=[{"pointer": where, "detail": detail}])


def admit(st: ApiState, tenant_id: uuid.UUID, model: str) -> ServingInfo:
    """The model to run (422 unknown, 503 no version), once the tenant and lane may queue."""
    info = model_for(st, model)
    quotas.admit(st, tenant_id, LANE)
    return info


def accept(
    st: ApiState, tenant_id: uuid.UUID, info: ServingInfo, lines: Iterator[Line], *, form: str
) -> BatchView:
    """Check every line, then create the batch and its items in one transaction, then
    publish the queued items; returns the committed batch."""
    with tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES) as spool:
        total = _spool_valid(st, info, lines, spool, form=form)
        if total == 0:
            raise InvalidInput("The upload holds no inputs; a batch needs at least one.")

        def insert() -> tuple[BatchView, bytearray]:
            spool.seek(0)
            return _insert(st, tenant_id, info, total, spool)

        view, queued = retry_on_disconnect(insert)
    publish(st, queued)
    return view


def _spool_valid(
    st: ApiState, info: ServingInfo, lines: Iterator[Line], spool: IO[bytes], *, form: str
) -> int:
    """Write each line that passes the schema to ``spool`` (with its cache key); raise at the
    first that does not, naming it."""
    schema = info.input_schema
    fast = fast_validator(schema)
    keyed = _cache_on(st, info)
    version_id, sha256 = info.active_version_id or 0, info.active_sha256 or ""
    count = 0
    for line in lines:
        if not fast.is_valid(line.value):
            _explain(schema, line, form)
        key = cache_key(st.settings, version_id, sha256, line.value).encode() if keyed else NO_KEY
        spool.write(key + b"\t" + line.text.encode() + b"\n")
        count += 1
    return count


def _explain(schema: dict[str, Any], line: Line, form: str) -> None:
    try:
        check(schema, line.value)
    except RecursionError:
        if form == "json":
            raise _item_problem(line.number, "is nested too deeply", "") from None
        raise bad_line(line.number, "is nested too deeply") from None
    except InvalidInput as exc:
        first = (exc.errors or [{"pointer": "/", "detail": exc.detail}])[0]
        pointer = first["pointer"] if first["pointer"] != "/" else ""
        if form == "json":
            raise _item_problem(line.number, first["detail"], pointer) from None
        detail = f"{first['pointer']} {first['detail']}"
        raise bad_line(line.number, detail, first["pointer"]) from None
    # The fast validator and the Python one disagree: the Python one is the API's judge.


def _cache_on(st: ApiState, info: ServingInfo) -> bool:
    return bool(
        st.settings.worker.cache_ttl_s > 0 and info.active_sha256 and info.config.get("cache", True)
    )


def _insert(
    st: ApiState, tenant_id: uuid.UUID, info: ServingInfo, total: int, spool: IO[bytes]
) -> tuple[BatchView, bytearray]:
    assert info.active_version_id is not None and info.active_version is not None
    queued = bytearray()  # 16 bytes per queued item: a million items hold 16 MB
    cached = 0
    with st.sessions.begin() as session:
        batch = create_batch(
            session,
            tenant_id=tenant_id,
            model_id=info.model_id,
            version_id=info.active_version_id,
            total=total,
            lane=LANE,
        )
        for items in _chunks(st, spool):
            cached += sum(item.cached_json is not None for item in items)
            for job_id in copy_items(session, batch, items):
                queued += job_id.bytes
        if cached:
            set_cached_count(session, batch.id, cached)
            batch.cached = cached
    return BatchView(batch, info.name, info.active_version), queued


def _chunks(st: ApiState, spool: IO[bytes]) -> Iterator[list[Item]]:
    index = 0
    while True:
        rows = [line for _, line in zip(range(INSERT_CHUNK), spool, strict=False)]
        if not rows:
            return
        keys, texts = zip(*(row.rstrip(b"\n").split(b"\t", 1) for row in rows), strict=True)
        outputs = _cached_outputs(st, keys)
        items = []
        for key_text, output in zip(zip(keys, texts, strict=True), outputs, strict=True):
            items.append(Item(index, key_text[1].decode(), output))
            index += 1
        yield items


def _cached_outputs(st: ApiState, keys: tuple[bytes, ...]) -> list[str | None]:
    """The cached output JSON of each key ("-": not looked up); misses when Redis is down."""
    wanted = [key.decode() for key in keys if key != NO_KEY]
    if not wanted:
        return [None] * len(keys)
    try:
        found = dict(zip(wanted, st.redis.mget(wanted), strict=True))
    except redis.RedisError:
        return [None] * len(keys)
    return [None if k == NO_KEY else _text(found.get(k.decode())) for k in keys]


def _text(raw: Any) -> str | None:
    return raw.decode() if isinstance(raw, bytes) and raw else None


def publish(st: ApiState, queued: bytearray) -> None:
    """Publish the queued items in chunks on the batch lane; what could not be published is
    marked so, and the reconciler publishes it again (the items are safe in Postgres)."""
    ids = [str(uuid.UUID(bytes=bytes(queued[i : i + 16]))) for i in range(0, len(queued), 16)]
    size = st.settings.batches.batch_chunk_size
    for start in range(0, len(ids), size):
        try:
            chunk = PredictRequest(tuple(ids[start : start + size]), LANE)
            publish_message(st.celery, st.settings, chunk)
        except Exception:
            log.warning(
                "batch publish failed; the reconciler will republish",
                extra={"jobs": len(ids) - start},
                exc_info=True,
            )
            _mark_unpublished(st, ids[start:])
            return


def _mark_unpublished(st: ApiState, ids: list[str]) -> None:
    for start in range(0, len(ids), INSERT_CHUNK):
        with st.sessions.begin() as session:
            mark_unpublished(session, [uuid.UUID(i) for i in ids[start : start + INSERT_CHUNK]])


def load(st: ApiState, batch_id: uuid.UUID, tenant_id: uuid.UUID) -> BatchView:
    """The tenant's batch, or 404 (also for another tenant's batch)."""

    def read() -> BatchView | None:
        with st.sessions() as session:
            return get_batch_view(session, batch_id, tenant_id)

    view = retry_on_disconnect(read)
    if view is None:
        if expired(st, batch_id):
            retention = st.settings.scheduler.job_retention
            raise Gone(f"Batch {batch_id} has expired: batches are kept for {retention}.")
        raise NotFound(f"No batch {batch_id}.")
    return view


def report(st: ApiState, view: BatchView) -> dict[str, Any]:
    """The batch with its progress; a running batch whose items all finished is recorded
    as completed here, the first time anyone looks."""
    with st.sessions.begin() as session:
        now = progress(session, view.batch.id)
        batch = view.batch
        if batch.status == "running" and now.open == 0 and now.last_completed_at is not None:
            mark_completed(session, batch.id, now.last_completed_at)
            batch.status, batch.completed_at = "completed", now.last_completed_at
    return describe(view, now)


def describe(view: BatchView, now: Progress) -> dict[str, Any]:
    """A batch as the API returns it."""
    batch = view.batch
    counts = {status: now.counts.get(status, 0) for status in STATUSES}
    rate = now.throughput
    done = batch.total - now.open
    eta = 0.0 if now.open == 0 else (round(now.open / rate, 1) if rate else None)
    return {
        "id": str(batch.id),
        "model": view.model,
        "version": view.version,
        "status": batch.status,
        "lane": batch.lane,
        "total": batch.total,
        "counts": counts,
        "done": done,
        "progress": round(done / batch.total, 4) if batch.total else 1.0,
        "cached": batch.cached,
        "throughput_per_s": None if rate is None else round(rate, 1),
        "eta_s": eta,
        "created_at": batch.created_at.isoformat(),
        "completed_at": batch.completed_at.isoformat() if batch.completed_at else None,
        "canceled_at": batch.canceled_at.isoformat() if batch.canceled_at else None,
        "results": f"/v1/batches/{batch.id}/results",
    }


STATUSES = ("queued", "running", "succeeded", "failed", "canceled")


def cancel(st: ApiState, batch_id: uuid.UUID, tenant_id: uuid.UUID) -> dict[str, Any]:
    """Cancel the batch's queued items (one statement); 409 once every item has finished."""
    view = load(st, batch_id, tenant_id)
    with st.sessions.begin() as session:
        if view.batch.status == "running" and progress(session, batch_id).open == 0:
            raise Conflict(f"Batch {batch_id} already finished; it cannot be canceled.")
        if view.batch.status == "completed":
            raise Conflict(f"Batch {batch_id} already completed; it cannot be canceled.")
        canceled, marked = cancel_batch(session, view.batch)
    log.info("batch canceled", extra={"batch_id": str(batch_id), "items": canceled + marked})
    return report(st, load(st, batch_id, tenant_id))


def results(st: ApiState, batch_id: uuid.UUID, fmt: str) -> Iterator[str]:
    """Every item's outcome in input order, as JSON Lines or CSV, page by page."""
    if fmt == "csv":
        yield "index,status,output,error\r\n"
    after = -1
    while True:
        with st.sessions() as session:
            page = results_page(session, batch_id, after, RESULTS_PAGE)
        if not page:
            return
        yield _csv(page) if fmt == "csv" else "".join(_jsonl(item) for item in page)
        after = page[-1].index
        if len(page) < RESULTS_PAGE:
            return


def _jsonl(item: Any) -> str:
    line = {"index": item.index, "status": item.status, "output": item.output, "error": item.error}
    return json.dumps(line, separators=(",", ":")) + "\n"


def _csv(page: list[Any]) -> str:
    out = io.StringIO()
    writer = csv.writer(out)
    for item in page:
        writer.writerow([item.index, item.status, _json_cell(item.output), _json_cell(item.error)])
    return out.getvalue()


def _json_cell(value: Any) -> str:
    return "" if value is None else json.dumps(value, separators=(",", ":"))


def jsonl_lines(st: ApiState) -> Iterator[Line]:
    """The upload's lines, parsed as they stream in, within the batch limits."""
    return read_lines(upload_stream(st.settings.batches.max_batch_bytes), limits(st))
