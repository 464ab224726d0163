"""The job operations behind the routes: accept (gates, then commit), publish, wait."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping
from typing import Any

from redis.client import Pipeline
from sqlalchemy.orm import Session

from api.http import ratelimit
from api.http.auth import Principal
from api.services import experiments as experiments_service
from api.services import idempotency, quotas, webhooks
from api.services.waiters import Signal
from api.state import ApiState
from db.engine import retry_on_disconnect, statement_connection
from db.ids import time_of
from db.jobs import (
    JobView,
    create_job,
    get_job_view,
    mark_unpublished,
    queued_job_values,
)
from db.partitions import horizon
from db.registry import ServingInfo, model_names, serving_info
from db.tables import TERMINAL_STATUSES, Job
from inferq.core.errors import (
    BadRequest,
    Conflict,
    Gone,
    InvalidInput,
    NotFound,
    ServiceUnavailable,
)
from inferq.core.status import status_key
from inferq.domain import result_cache as cache

log = logging.getLogger(__name__)

#: The API's clock may run behind the database's, whose ``now()`` retention counts from.
HORIZON_SLACK = dt.timedelta(minutes=1)
_PREFER_WAIT = re.compile(r"(?:^|[,;\s])wait\s*=\s*\"?(\d+(?:\.\d+)?)\"?", re.IGNORECASE)


def parse_job_id(raw: str) -> uuid.UUID:
    """``raw`` as a UUID, or a 400 problem."""
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise BadRequest(f"Job ids are UUIDs; {raw[:64]!r} is not one.") from None


def prefer_wait(header: str | None, max_wait_s: float) -> float:
    """Seconds asked for by ``Prefer: wait=N`` (RFC 7240), capped; 0 when absent or unusable."""
    match = _PREFER_WAIT.search(header or "")
    return min(float(match.group(1)), max_wait_s) if match else 0.0


def query_wait(raw: str | None, max_wait_s: float) -> float:
    """Seconds asked for by ``?wait=N``, capped at ``max_wait_s``; a bad value is a 400.

    An empty ``?wait=`` is a bad value too: the OpenAPI contract types ``wait`` as a number.
    """
    if raw is None:
        return 0.0
    try:
        seconds = float(raw)
    except ValueError:
        raise BadRequest(f"wait must be a number of seconds, not {raw[:32]!r}.") from None
    if not 0 <= seconds < float("inf"):
        raise BadRequest("wait must be a non-negative number of seconds.")
    return min(seconds, max_wait_s)


MAX_CANCEL_AFTER_S = 86_400.0


def cancel_after(header: str | None) -> float | None:
    """Seconds from ``Cancel-After: N``: a job not started by then fails as ``expired``."""
    if header is None:
        return None
    try:
        seconds = float(header)
    except ValueError:
        raise BadRequest("Cancel-After must be a number of seconds.") from None
    if not 0 < seconds <= MAX_CANCEL_AFTER_S:
        raise BadRequest(f"Cancel-After must be more than 0 and at most {MAX_CANCEL_AFTER_S:g} s.")
    return seconds


def model_for(
    st: ApiState, name: str, before_reading: Callable[[], None] = lambda: None
) -> ServingInfo:
    """The model a job names, or a 422 naming the known ones. ``before_reading`` runs before
    Postgres is read for it (where the model is not cached)."""

    def load() -> ServingInfo | None:
        before_reading()
        with st.sessions() as session:
            return serving_info(session, name)

    info = st.models.get(name, load)
    if info is None:
        before_reading()
        with st.sessions() as session:
            known = ", ".join(model_names(session)) or "none yet"
        raise InvalidInput(
            f"There is no model named {name[:64]!r}; the models are: {known}.",
            errors=[{"pointer": "/model", "detail": "unknown model (GET /v1/models lists them)"}],
        )
    if info.active_version_id is None or info.active_version is None:
        raise Conflict(
            f"Model {name!r} has no active version: register one "
            f"(POST /v1/models/{name}/versions?activate=true) or promote one."
        )
    return info


def accept(
    st: ApiState,
    principal: Principal,
    info: ServingInfo,
    body: dict[str, Any],
    expires_in_s: float | None,
    token: ratelimit.DeferredToken,
) -> tuple[JobView, bool]:
    """The job for a validated submission, and whether it is a replay of an earlier one.

    The gates come first (the caller's rate, taking ``token``; idempotency replay, webhook
    URL, quotas), then the job is committed. A replay (same ``Idempotency-Key``, same
    request) skips quotas: it creates nothing.
    """
    key = idempotency.header_key()
    print_ = idempotency.fingerprint(body) if key else ""
    # The version first: the result cache's key names it.
    chosen = experiments_service.route(st, info, principal.tenant_id, body.get("user"))
    cached = _take_token_and_look_up(st, token, info, chosen, body["input"])
    if key:
        earlier = idempotency.replay(st, principal, key, print_)
        if earlier is not None:
            return earlier, True
    url = body.get("webhook")
    if url:
        webhooks.vet(st, url)
    quotas.admit(st, principal.tenant_id, body.get("lane", "online"))
    hooks: list[Callable[[Session, Job], None]] = []
    if url:
        hooks.append(webhooks.attacher(url))
    if key:
        hooks.append(idempotency.claimer(st, principal, key, print_))

    def on_insert(session: Session, job: Job) -> None:
        for hook in hooks:
            hook(session, job)

    try:
        hook = on_insert if hooks else None
        view = _commit(
            st, principal.tenant_id, info, chosen, cached, body, expires_in_s, on_insert=hook
        )
    except idempotency.KeyTaken:
        # A concurrent request with the same key won; answer with its job.
        earlier = idempotency.replay(st, principal, key or "", print_)
        if earlier is None:
            raise ServiceUnavailable(
                "A concurrent request with this Idempotency-Key did not finish; retry.",
                headers={"Retry-After": "1"},
            ) from None
        return earlier, True
    if url and view.job.cached:  # born finished: nothing else will deliver its webhook
        webhooks.finished(st, [view.job.id])
    return view, False


def _take_token_and_look_up(
    st: ApiState,
    token: ratelimit.DeferredToken,
    info: ServingInfo,
    chosen: experiments_service.Route,
    input: Any,
) -> Any | None:
    """Take the caller's rate-limit token (429 when over its rate; unless ``token`` was
    taken already) and read the result cache's output for ``input``: one Redis round trip
    for both, shared with the submits this process holds at the same time
    (api.services.shared_pipeline); none when both are off. Where Redis fails, the request
    goes on uncounted and uncached, as with either alone: the rate limiter fails open, and
    the job runs."""
    key = cache.cache_key_for(
        st.settings, chosen.version_id, chosen.sha256, input, info.config.get("cache", True)
    )
    counts = token.would_count
    if key is None and not counts:
        return None

    def fill(pipe: Pipeline) -> int:
        if counts:
            token.queue(pipe)
        if key is not None:
            pipe.get(key)
        return int(counts) + (key is not None)

    replies = st.redis_trips.run(fill)
    if counts:
        token.settle(replies.pop(0))
    return cache.decode(replies[0]) if key is not None else None


def _commit(
    st: ApiState,
    tenant_id: uuid.UUID,
    info: ServingInfo,
    chosen: experiments_service.Route,
    cached: Any | None,
    body: dict[str, Any],
    expires_in_s: float | None = None,
    on_insert: Callable[[Session, Job], None] | None = None,
) -> JobView:
    """Commit the job for the version ``chosen`` (born finished with ``cached``, the result
    cache's output, when there is one); it is durable from here on, whatever happens to the
    broker.

    ``on_insert`` runs in the job's transaction (idempotency key, webhook); if it raises,
    the job is rolled back.
    """
    columns = queued_job_values(
        tenant_id=tenant_id,
        model_id=info.model_id,
        version_id=chosen.version_id,
        lane=body.get("lane", "online"),
        input=body["input"],
        user=body.get("user"),
        experiment_id=chosen.experiment_id,
        arm=chosen.arm,
    )
    if cached is None and expires_in_s is None and on_insert is None:
        # Nothing else in its transaction: committed with the jobs accepted meanwhile.
        return JobView(st.inserter.insert(columns), info.name, chosen.version)

    def insert() -> Job:
        with st.sessions.begin() as session:
            job = create_job(session, columns, cached_output=cached, expires_in_s=expires_in_s)
            if on_insert is not None:
                on_insert(session, job)
            return job

    return JobView(retry_on_disconnect(insert), info.name, chosen.version)


def publish(st: ApiState, view: JobView) -> None:
    """Send the job to its lane (in one message with the jobs other threads accepted meanwhile,
    see api.services.publisher); on failure leave it to the reconciler (the job is safe)."""
    try:
        st.publisher.publish(str(view.job.id), view.job.lane)
    except Exception:
        log.warning(
            "publish failed; the reconciler will republish",
            extra={"job_id": str(view.job.id)},
            exc_info=True,
        )
        with st.sessions.begin() as session:
            mark_unpublished(session, [view.job.id])


def load(
    st: ApiState, job_id: uuid.UUID, tenant_id: uuid.UUID, *, with_ahead: bool = False
) -> JobView:
    """The tenant's job, or 404 (also for another tenant's job); ``with_ahead`` counts the
    jobs queued ahead of it in the same statement (for its position)."""

    def read() -> JobView | None:
        with statement_connection(st.sessions) as conn:  # one round trip, no BEGIN/ROLLBACK
            return get_job_view(conn, job_id, tenant_id, with_ahead=with_ahead)

    view = retry_on_disconnect(read)
    if view is None:
        raise missing(st, job_id)
    return view


def missing(st: ApiState, job_id: uuid.UUID) -> NotFound | Gone:
    """The problem for a job the tenant does not have: 410 when retention took it."""
    if expired(st, job_id):
        retention = st.settings.scheduler.job_retention
        return Gone(f"Job {job_id} has expired: jobs are kept for {retention}.")
    return NotFound(f"No job {job_id}.")


def expired(st: ApiState, ident: uuid.UUID) -> bool:
    """Whether the creation time a UUIDv7 id carries is older than what ``jobs`` still holds
    (the id alone says so: another tenant's expired id is as gone as one's own).

    The horizon is cached for a minute; an id older than the retention but not than the
    cached horizon may have gone since, so it reads the horizon afresh. An id that carries
    no time (UUIDv4, from before migration 0011) cannot say whether it ever existed: 404.
    """
    created = time_of(ident)
    if created is None:
        return False
    boundary = _horizon(st)
    if boundary is not None and created < boundary:
        return True
    retention = dt.timedelta(seconds=st.settings.scheduler.job_retention_s)
    if created >= dt.datetime.now(dt.timezone.utc) - retention + HORIZON_SLACK:
        return False  # younger than the retention: no pass has dropped it
    st.horizon.forget("horizon")
    boundary = _horizon(st)
    return boundary is not None and created < boundary


def _horizon(st: ApiState) -> dt.datetime | None:
    found: dt.datetime | None = st.horizon.get(
        "horizon", lambda: retry_on_disconnect(_read_horizon(st))
    )
    return found


def _read_horizon(st: ApiState) -> Callable[[], dt.datetime | None]:
    def read() -> dt.datetime | None:
        with st.sessions() as session:
            return horizon(session)

    return read


#: A wait that runs out ends this long before the seconds asked for (a tenth of them at
#: most), so that the answer -- the grouped read of a job still open (api.services.progress
#: gathers for 50 ms), its rendering, its way back -- reaches the client within them, as
#: RFC 7240's ``wait`` asks ("respond within"). Without it a busy node's answers came a few
#: hundred milliseconds past the wait, and a client whose timeout is the wait gave up.
ANSWER_MARGIN_S = 0.3


def wait_deadline(seconds: float) -> float:
    """When a wait of ``seconds`` starting now ends if no signal comes (``time.monotonic``)."""
    return time.monotonic() + seconds - min(ANSWER_MARGIN_S, seconds / 10)


def wait_until_terminal(st: ApiState, view: JobView, seconds: float, signal: Signal) -> JobView:
    """Block until the job is terminal or ``seconds`` pass (less :data:`ANSWER_MARGIN_S`).
    When signalled, answer from the fields the worker sent with the signal; read the job
    again only when it sent none."""
    deadline = wait_deadline(seconds)
    while view.job.status not in TERMINAL_STATUSES:
        remaining = deadline - time.monotonic()
        if remaining <= 0 or not signal.wait(remaining):
            return refresh(st, view)
        finished, signal.payload = signal.payload, None
        signal.clear()
        view = with_final_fields(view, finished) or load(st, view.job.id, view.job.tenant_id)
    return view


def load_to_wait(st: ApiState, job_id: uuid.UUID, tenant_id: uuid.UUID) -> JobView:
    """The tenant's job (or 404) for a long-poll that expects its completion signal already:
    the view this process kept as it last answered for the job while it was open
    (api.services.recent), unless the job's status key says it has finished since; else
    read from Postgres."""
    kept = st.recent.take(job_id, tenant_id)
    if kept is not None and not _finished_lately(st, job_id):
        return kept
    return load(st, job_id, tenant_id)


def _finished_lately(st: ApiState, job_id: uuid.UUID) -> bool:
    """Whether Redis holds the job's status key, set by every path that finishes a job in
    the round trip that publishes its signal (True where Redis cannot say). Asked in a
    round trip shared with the requests in flight beside it (api.services.shared_pipeline)."""
    key = status_key(st.settings, str(job_id))

    def fill(pipe: Pipeline) -> int:
        pipe.exists(key)
        return 1

    reply = st.redis_trips.run(fill)[0]
    return True if isinstance(reply, Exception) else bool(reply)


def refresh(st: ApiState, view: JobView) -> JobView:
    """``view`` brought up to date once a wait ended without a completion signal: the job is
    most likely still open, so only the fields an open job changes are read (a light query;
    reading the whole row again was the largest cost of a long-poll that timed out), in a
    group with the other requests' (api.services.progress). A job found finished after all
    (a signal missed while the subscription reconnected), or gone, is read whole."""

    now = st.progress.read(view.job.id, view.job.tenant_id)  # grouped with others' reads
    if now is None or now.status in TERMINAL_STATUSES:
        return load(st, view.job.id, view.job.tenant_id)
    job = view.job  # detached from its session: set for rendering, never written back
    job.status, job.started_at, job.worker = now.status, now.started_at, now.worker
    job.attempts, job.cancel_requested = now.attempts, now.cancel_requested
    return dataclasses.replace(view, ahead=now.ahead)


#: What a worker sends with a completion (workers.runner.final_fields), all needed to answer.
FINAL_FIELDS = frozenset(
    {"status", "output", "error", "worker", "attempts", "batch_size", "predict_ms"}
    | {"started_at", "completed_at"}
)


def with_final_fields(view: JobView, fields: Mapping[str, Any] | None) -> JobView | None:
    """``view`` updated with a finished job's fields, or None when they are incomplete.

    The job row was read before it finished and is detached from its session: the fields
    are set on it for rendering and never written back.
    """
    if not fields or not fields.keys() >= FINAL_FIELDS:
        return None
    if fields["status"] not in TERMINAL_STATUSES:
        return None
    try:
        started = _timestamp(fields["started_at"])
        completed = _timestamp(fields["completed_at"])
        fetched = _timestamp(fields.get("fetched_at"))  # a worker from before 0013 sends none
    except ValueError:
        return None
    job = view.job
    job.status, job.output, job.error = fields["status"], fields["output"], fields["error"]
    job.worker, job.attempts = fields["worker"], fields["attempts"]
    job.batch_size, job.predict_ms = fields["batch_size"], fields["predict_ms"]
    job.fetched_at, job.started_at, job.completed_at = fetched, started, completed
    return view


def _timestamp(value: Any) -> dt.datetime | None:
    return None if value is None else dt.datetime.fromisoformat(str(value))
