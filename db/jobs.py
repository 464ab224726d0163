"""Job repository: every statement that reads or changes jobs.

The worker's path is batch-shaped: one statement claims many jobs, one stores many results,
both guarded so that a redelivered message or a second worker changes nothing.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import json
import re
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    Integer,
    bindparam,
    case,
    func,
    insert,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.orm import Session

from db.engine import KeptConnection
from db.ids import new_id, time_of
from db.tables import Job


@dataclasses.dataclass(frozen=True)
class ClaimedJob:
    """A job a worker now owns: what it needs to run the model."""

    id: uuid.UUID
    version_id: int
    input: dict[str, Any]
    created_at: dt.datetime
    started_at: dt.datetime
    attempts: int
    #: when the worker received the job's message; None when it was not told
    fetched_at: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class JobResult:
    """The outcome of one job, as a worker reports it."""

    id: uuid.UUID
    status: str  # succeeded | failed
    output: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    batch_size: int | None = None
    predict_ms: float | None = None
    #: ``output`` as JSON text, when the worker has written it already (the result cache's)
    output_json: str | None = None


@dataclasses.dataclass(frozen=True)
class StoredResult:
    """A result that was written, with the status it ended in (``canceled`` wins over success)."""

    id: uuid.UUID
    status: str
    tenant_id: uuid.UUID
    completed_at: dt.datetime | None = None
    #: whether the job has a webhook to deliver; None when the statement did not say
    hooked: bool | None = None


#: The hot path's insert, built once so its compiled form is reused; values are parameters.
#: Given many rows it is one multi-row INSERT (SQLAlchemy's "insertmanyvalues"). Not with
#: ``sort_by_parameter_order``: the key's ``created_at`` has a server default, so SQLAlchemy
#: would find no sentinel column and fall back to one INSERT per row; the rows are matched
#: to their values by id instead. Only what the server sets comes back: the rest was sent.
_INSERT_QUEUED = insert(Job).values(published_at=func.now()).returning(Job.id, Job.published_at)

#: A ``jobs`` row's columns, and the Job attributes they load, in the same order.
_JOB_KEYS = tuple(attr.key for attr in Job.__mapper__.column_attrs)
_JOB_COLUMNS = tuple(attr.columns[0] for attr in Job.__mapper__.column_attrs)

#: A new queued job's columns that its values leave out: what the server defaults them to.
_NEW_JOB = {attr.key: None for attr in Job.__mapper__.column_attrs} | {
    "cached": False,
    "cancel_requested": False,
    "attempts": 0,
}


def queued_job_values(
    *,
    tenant_id: uuid.UUID,
    model_id: int,
    version_id: int,
    lane: str,
    input: dict[str, Any],
    user: str | None = None,
    experiment_id: uuid.UUID | None = None,
    arm: str | None = None,
) -> dict[str, Any]:
    """The column values of a new queued job, its id (a UUIDv7) and creation time included."""
    job_id = new_id()
    return {
        "id": job_id,
        "created_at": time_of(job_id),
        "tenant_id": tenant_id,
        "model_id": model_id,
        "version_id": version_id,
        "lane": lane,
        "status": "queued",
        "input": input,
        "user": user,
        "experiment_id": experiment_id,
        "arm": arm,
    }


def insert_queued_jobs(
    session: Session | Connection | KeptConnection, rows: Sequence[dict[str, Any]]
) -> list[Job]:
    """Insert queued jobs (queued_job_values; ``published_at`` now: the caller publishes
    next) in one statement, and return them in the order given.

    On the connection (about a third of the ORM insert's CPU): the Jobs returned are not
    attached to the session, for callers to read, never to write.
    """
    if isinstance(session, KeptConnection):
        # The rows as one JSON array, unpacked by Postgres (jsonb_to_recordset): one
        # parameter for the driver to quote, where a VALUES row of parameters cost it 45 us
        # of CPU per job (every value adapted and quoted, the statement formatted around them).
        keys = tuple(rows[0])
        plain = [{key: _plain(values[key]) for key in keys} for values in rows]
        returned = session.execute(_insert_rows_sql(keys), {"rows": session.json(plain)})
        published = {uuid.UUID(str(job_id)): at for job_id, at in returned}
        return [_detached_job(values, published_at=published[values["id"]]) for values in rows]
    connection = _on(session)
    if len(rows) == 1:
        found = [connection.execute(_INSERT_QUEUED, rows[0]).one()]
    else:
        found = list(connection.execute(_INSERT_QUEUED, list(rows)))
    published = {row.id: row.published_at for row in found}
    return [_detached_job(values, published_at=published[values["id"]]) for values in rows]


def _plain(value: Any) -> Any:
    """A column's value as JSON holds it for jsonb_to_recordset (UUIDs and times as text)."""
    if isinstance(value, uuid.UUID):
        return str(value)
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


@functools.lru_cache(maxsize=16)
def _insert_rows_sql(keys: tuple[str, ...]) -> str:
    """_INSERT_QUEUED for any number of rows of these columns (queued_job_values'), given as
    one JSON array ``%(rows)s`` in the driver's parameter style (KeptConnection)."""
    dialect = postgresql.dialect()
    columns = ", ".join(f'"{key}"' for key in keys)
    types = ", ".join(f'"{key}" {Job.__table__.c[key].type.compile(dialect)}' for key in keys)
    return (
        f"INSERT INTO jobs ({columns}, published_at) SELECT {columns}, now()"
        f" FROM jsonb_to_recordset(CAST(%(rows)s AS jsonb)) AS r({types})"
        " RETURNING id, published_at"
    )


def find_inserted(
    session: Session | Connection, rows: Sequence[dict[str, Any]]
) -> dict[uuid.UUID, Job]:
    """Those of ``rows`` (queued_job_values) that ``jobs`` holds, by id, as
    :func:`insert_queued_jobs` returns them: after a connection lost with their INSERT in
    flight, which went in (each row's id and creation time find it in its partition)."""
    keys = [(values["id"], values["created_at"]) for values in rows]
    found = _on(session).execute(
        select(Job.id, Job.published_at).where(tuple_(Job.id, Job.created_at).in_(keys))
    )
    published = {row.id: row.published_at for row in found}
    return {
        values["id"]: _detached_job(values, published_at=published[values["id"]])
        for values in rows
        if values["id"] in published
    }


def _detached_job(values: dict[str, Any], **server_set: Any) -> Job:
    """A Job holding a new row's columns, built as the ORM's loader builds one: its state
    filled in directly, without the change event per column a constructor fires (as much
    CPU as the insert itself)."""
    job: Job = Job.__mapper__.class_manager.new_instance()
    job.__dict__.update(_NEW_JOB, **values, **server_set)
    return job


def copy_job(job: Job) -> Job:
    """A detached copy of ``job``'s columns, for a reader that sets fields on it to render
    (api.services.jobs.refresh) while others hold the original."""
    return _detached_job({key: job.__dict__[key] for key in _JOB_KEYS if key in job.__dict__})


def create_job(
    session: Session,
    values: dict[str, Any],
    *,
    cached_output: dict[str, Any] | None = None,
    expires_in_s: float | None = None,
) -> Job:
    """Insert a job from ``values`` (queued_job_values): queued (``published_at`` now: the
    caller publishes next), expiring after ``expires_in_s`` when given, or, with a
    ``cached_output``, already succeeded from the result cache."""
    if cached_output is None and expires_in_s is None:
        return insert_queued_jobs(session, [values])[0]
    values = {**values, "published_at": func.now()}
    if expires_in_s is not None:
        values["expires_at"] = func.now() + dt.timedelta(seconds=expires_in_s)
    if cached_output is not None:
        values.update(status="succeeded", output=cached_output, cached=True, published_at=None)
        values.update(started_at=func.now(), completed_at=func.now())
    # One round trip: the row comes back with its server defaults (created_at…).
    job = session.scalars(insert(Job).values(**values).returning(Job)).one()
    return job


def is_job(job_id: uuid.UUID) -> Any:
    """The condition that finds job ``job_id``: with the creation time its id carries, in
    the one partition that holds it; an id from before UUIDv7 looks in every partition."""
    return of_job(Job.id, Job.created_at, job_id)


def of_job(id_column: Any, created_column: Any, job_id: uuid.UUID) -> Any:
    """The condition on ``(id_column, created_column)`` that finds the rows of job ``job_id``
    in ``jobs`` or a table partitioned with it (is_job)."""
    created_at = time_of(job_id)
    if created_at is None:
        return id_column == job_id
    return (id_column == job_id) & (created_column == created_at)


def get_job(session: Session, job_id: uuid.UUID, tenant_id: uuid.UUID) -> Job | None:
    """The tenant's job, or None (another tenant's job is indistinguishable from no job)."""
    return session.scalars(
        select(Job).where(is_job(job_id), Job.tenant_id == tenant_id)
    ).one_or_none()


@dataclasses.dataclass(frozen=True)
class JobView:
    """A job with the name of its model and the number of the version serving it."""

    job: Job
    model: str
    version: int
    #: the queued jobs of its lane created before it, per model id, when read with it
    #: (``with_ahead``: a queued job's position costs no second round trip); None otherwise
    ahead: dict[int, int] | None = None


#: The jobs ahead are counted up to this many (the nearest ones): deeper in a backlog a
#: job's position is estimated from its lane's figures (api.services.position), so a read
#: costs the same with a hundred thousand jobs queued ahead as with a thousand.
AHEAD_COUNTED_UP_TO = 1000


def _ahead() -> Any:
    """A column for a ``jobs`` row: its lane's queued jobs created before it, the nearest
    ``ahead_cap`` of them (a bound parameter), counted per model id (a JSON object), for a
    queued job; NULL for any other status. Counts adding up to the cap mean "at least".

    The count is the function ``inferq_jobs_ahead`` (migration 0015), not a subquery: a
    function's plan is kept per connection, where the subquery was planned again on every
    read (0.8 ms of Postgres CPU each, over every partition and its indexes)."""
    cap = bindparam("ahead_cap", type_=Integer)
    return case((Job.status == "queued", func.inferq_jobs_ahead(Job.lane, Job.created_at, cap)))


def _counts(raw: dict[str, int] | None) -> dict[int, int] | None:
    return None if raw is None else {int(model): int(n) for model, n in raw.items()}


def _one_job(by_time: bool) -> Any:
    """is_job and the tenant as bound parameters (``job_id``, ``created_at``, ``tenant_id``),
    for statements built once: see :func:`_job_params`."""
    found = (Job.id == bindparam("job_id")) & (Job.tenant_id == bindparam("tenant_id"))
    return found & (Job.created_at == bindparam("created_at")) if by_time else found


def _job_params(job_id: uuid.UUID, tenant_id: uuid.UUID) -> tuple[bool, dict[str, Any]]:
    """Whether job ``job_id`` is found by its creation time too (a UUIDv7: one partition), and
    the parameters of :func:`_one_job`'s condition."""
    created_at = time_of(job_id)
    params: dict[str, Any] = {
        "job_id": job_id,
        "tenant_id": tenant_id,
        "ahead_cap": AHEAD_COUNTED_UP_TO,  # looked up per call: tests lower it
    }
    if created_at is not None:
        params["created_at"] = created_at
    return created_at is not None, params


# The reads a poll or a long-poll makes are built once per shape, not per call: building a
# select, its aliased subquery and its cache key was most of an answer's CPU in the API.
@functools.cache
def _view_statement(with_ahead: bool, by_time: bool) -> Any:
    from db.tables import Model, ModelVersion

    columns: list[Any] = [*_JOB_COLUMNS, Model.name, ModelVersion.version]
    if with_ahead:
        columns.append(_ahead())
    return (
        select(*columns)
        .join(Model, Model.id == Job.model_id)
        .join(ModelVersion, ModelVersion.id == Job.version_id)
        .where(_one_job(by_time))
    )


def _on(session: Session | Connection) -> Connection:
    return session if isinstance(session, Connection) else session.connection()


def get_job_view(
    session: Session | Connection,
    job_id: uuid.UUID,
    tenant_id: uuid.UUID,
    *,
    with_ahead: bool = False,
) -> JobView | None:
    """The tenant's job with its model name and version number, or None; ``with_ahead``
    also counts the jobs queued ahead of it (JobView.ahead), in the same statement."""
    by_time, params = _job_params(job_id, tenant_id)
    # On the connection: the ORM's execution and loading were about a fifth of a read's CPU,
    # and a long-poll reads twice. The Job is built as insert_queued_jobs builds one: for
    # reading, attached to no session.
    statement = _view_statement(with_ahead, by_time)
    row = _on(session).execute(statement, params).one_or_none()
    if row is None:
        return None
    n = len(_JOB_KEYS)
    job: Job = Job.__mapper__.class_manager.new_instance()
    job.__dict__.update(zip(_JOB_KEYS, row[:n], strict=True))
    return JobView(job, row[n], row[n + 1], _counts(row[n + 2]) if with_ahead else None)


@dataclasses.dataclass(frozen=True)
class JobProgress:
    """What an open job changes before it finishes."""

    status: str
    started_at: dt.datetime | None
    worker: str | None
    attempts: int
    cancel_requested: bool
    #: as JobView.ahead: the jobs queued ahead of it per model id while it is queued
    ahead: dict[int, int] | None = None


@functools.cache
def _progress_of_many_statement(by_time: bool) -> Any:
    statement = select(
        Job.id,
        Job.tenant_id,
        Job.status,
        Job.started_at,
        Job.worker,
        Job.attempts,
        Job.cancel_requested,
        _ahead(),
    ).where(Job.id.in_(bindparam("job_ids", expanding=True)))
    if by_time:  # each id's partition only, not every one
        statement = statement.where(Job.created_at.in_(bindparam("times", expanding=True)))
    return statement


def get_jobs_progress(
    session: Session | Connection, job_ids: Iterable[uuid.UUID]
) -> dict[uuid.UUID, tuple[uuid.UUID, JobProgress]]:
    """The status of each of ``job_ids`` and the fields that change with it before it
    finishes (and, while it is queued, the jobs ahead of it), in one statement, for
    long-polls whose wait ran out without a signal: each job found, by id, with its tenant
    (the caller checks it: a job of another tenant is no job of the asker's)."""
    ids = sorted(set(job_ids))
    if not ids:
        return {}
    times = [time_of(i) for i in ids]
    by_time = None not in times
    params: dict[str, Any] = {"job_ids": ids, "ahead_cap": AHEAD_COUNTED_UP_TO}
    if by_time:
        params["times"] = sorted({t for t in times if t is not None})
    rows = _on(session).execute(_progress_of_many_statement(by_time), params)
    found: dict[uuid.UUID, tuple[uuid.UUID, JobProgress]] = {}
    for job_id, tenant_id, status, started_at, worker, attempts, cancel, ahead in rows:
        progress = JobProgress(status, started_at, worker, attempts, cancel, _counts(ahead))
        found[job_id] = (tenant_id, progress)
    return found


def cancel_job(session: Session, job_id: uuid.UUID, tenant_id: uuid.UUID) -> Job | None:
    """Cancel a queued job outright; mark a running one so its result is discarded."""
    session.execute(
        update(Job)
        .where(is_job(job_id), Job.tenant_id == tenant_id, Job.status == "queued")
        .values(status="canceled", completed_at=func.clock_timestamp())
    )
    session.execute(
        update(Job)
        .where(is_job(job_id), Job.tenant_id == tenant_id, Job.status == "running")
        .values(cancel_requested=True)
    )
    session.expire_all()
    return get_job(session, job_id, tenant_id)


def mark_unpublished(session: Session, job_ids: Iterable[uuid.UUID]) -> None:
    """Record that publishing failed, so the reconciler publishes these jobs again at once."""
    session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.status == "queued")
        .values(published_at=None)
    )


# Planned once per connection, partitions pruned as it runs, and committed without waiting
# for its WAL flush (migration 0016: the store's commit, which waits, makes it durable too).
# In the driver's parameter style, for a KeptConnection; as text() for the rest.
CLAIM_SQL = (
    "SELECT * FROM inferq_claim_jobs(CAST(%(ids)s AS uuid[]), CAST(%(fetched)s AS float8[]),"
    " %(worker)s, %(since)s, %(until)s)"
)
_CLAIM = text(re.sub(r"%\((\w+)\)s", r":\1", CLAIM_SQL))


def claim_jobs(
    session: Session | Connection | KeptConnection,
    job_ids: Sequence[uuid.UUID | str],
    worker: str,
    fetched: Sequence[float | None] | None = None,
) -> list[ClaimedJob]:
    """Atomically take the still-queued jobs among ``job_ids``; the rest are someone else's.
    ``fetched``: when each one's message reached the worker (Unix seconds, None: unknown).

    The transaction it runs in commits without waiting for its WAL flush (``SET LOCAL
    synchronous_commit = off``): run it alone, on a connection in autocommit, as the worker
    does, and nothing else shares that."""
    since, until = time_window(job_ids)
    params = {
        "ids": [str(i) for i in job_ids],
        "fetched": list(fetched) if fetched is not None else [None] * len(job_ids),
        "worker": worker,
        "since": since,
        "until": until,
    }
    if isinstance(session, KeptConnection):
        return [ClaimedJob(*row) for row in session.execute(CLAIM_SQL, params)]
    return [ClaimedJob(*row) for row in _on(session).execute(_CLAIM, params)]


def time_window(job_ids: Sequence[uuid.UUID | str]) -> tuple[Any, Any]:
    """The span of creation times the ids carry, so that Postgres reads only the partitions
    that can hold them; everything when an id carries none (made before UUIDv7 ids)."""
    times = [time_of(i if isinstance(i, uuid.UUID) else uuid.UUID(i)) for i in job_ids]
    if not times or None in times:
        return "-infinity", "infinity"
    return min(times), max(times)  # type: ignore[type-var]


# Planned once per connection, partitions pruned as it runs (migration 0016).
STORE_SQL = (
    "SELECT * FROM inferq_store_results(CAST(%(results)s AS jsonb), %(worker)s, %(since)s,"
    " %(until)s)"
)
_STORE = text(re.sub(r"%\((\w+)\)s", r":\1", STORE_SQL))


def store_results(
    session: Session | Connection | KeptConnection, results: Sequence[JobResult], worker: str
) -> list[StoredResult]:
    """Write a batch of results in one statement, only for jobs this worker still owns; each
    comes back saying whether it has a webhook (no second query to find out)."""
    if not results:
        return []
    payload = "[" + ",".join(map(_result_json, results)) + "]"
    since, until = time_window([r.id for r in results])
    params = {"results": payload, "worker": worker, "since": since, "until": until}
    if isinstance(session, KeptConnection):
        return [StoredResult(*row) for row in session.execute(STORE_SQL, params)]
    return [StoredResult(*row) for row in _on(session).execute(_STORE, params)]


def _result_json(result: JobResult) -> str:
    """One result as the store's JSON object; its output as the worker wrote it already,
    when it did (an embedding's 384 floats are not written twice). A flat dict per result:
    dataclasses.asdict deep-copies every output."""
    fields = json.dumps(
        {
            "id": str(result.id),
            "status": result.status,
            "error": result.error,
            "batch_size": result.batch_size,
            "predict_ms": result.predict_ms,
        }
    )
    output = result.output_json if result.output_json is not None else json.dumps(result.output)
    return f'{fields[:-1]}, "output": {output}}}'


def fail_jobs(
    session: Session, job_ids: Sequence[uuid.UUID], error: dict[str, Any]
) -> list[StoredResult]:
    """Fail queued or running jobs outright (poison input, attempts exhausted)."""
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.status.in_(("queued", "running")))
        .values(status="failed", error=error, completed_at=func.clock_timestamp())
        .returning(Job.id, Job.status, Job.tenant_id, Job.completed_at)
    )
    return [StoredResult(*row) for row in rows]


def running_workers(session: Session) -> dict[str, list[tuple[uuid.UUID, int, str]]]:
    """Running jobs grouped by the worker that claimed them: ``(id, attempts, lane)``."""
    owners: dict[str, list[tuple[uuid.UUID, int, str]]] = {}
    rows = session.execute(
        select(Job.worker, Job.id, Job.attempts, Job.lane).where(Job.status == "running")
    )
    for worker, job_id, attempts, lane in rows:
        owners.setdefault(worker or "", []).append((job_id, attempts, lane))
    return owners


def requeue_jobs(
    session: Session, job_ids: Sequence[uuid.UUID], worker: str
) -> list[tuple[uuid.UUID, str]]:
    """Put jobs a lost worker held back in the queue; returns ``(id, lane)`` to publish."""
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.status == "running", Job.worker == worker)
        .values(status="queued", worker=None, started_at=None, published_at=func.now())
        .returning(Job.id, Job.lane)
    )
    return [(row[0], row[1]) for row in rows]


def overdue_jobs(session: Session, limit_s: float) -> set[uuid.UUID]:
    """Running jobs started more than ``limit_s`` seconds ago."""
    cutoff = func.now() - dt.timedelta(seconds=limit_s)
    return set(
        session.scalars(select(Job.id).where(Job.status == "running", Job.started_at < cutoff))
    )


# Through ix_jobs_expiring: only queued jobs with a deadline are looked at. The cutoff is the
# pass's now() (stable, so it bounds the index scan; clock_timestamp() could not).
_EXPIRE = text(
    """
    UPDATE jobs
       SET status = 'failed', completed_at = clock_timestamp(),
           error = jsonb_build_object('type', 'expired',
                                      'message', 'not started before its Cancel-After deadline')
     WHERE status = 'queued' AND expires_at IS NOT NULL AND expires_at <= now()
 RETURNING id, status, tenant_id, completed_at
    """
)


def expire_jobs(session: Session) -> list[StoredResult]:
    """Fail every queued job whose deadline passed before a worker started it."""
    return [StoredResult(*row) for row in session.execute(_EXPIRE)]


def unclaim_jobs(
    session: Session, job_ids: Sequence[uuid.UUID], worker: str
) -> list[tuple[uuid.UUID, str]]:
    """Hand back jobs this worker claimed but will not run, without counting the attempt."""
    rows = session.execute(
        update(Job)
        .where(Job.id.in_(list(job_ids)), Job.status == "running", Job.worker == worker)
        .values(
            status="queued",
            worker=None,
            started_at=None,
            attempts=Job.attempts - 1,
            published_at=func.now(),
        )
        .returning(Job.id, Job.lane)
    )
    return [(row[0], row[1]) for row in rows]


_STALE = text(
    """
    UPDATE jobs SET published_at = now()
     WHERE id IN (
        SELECT id FROM jobs
         WHERE status = 'queued'
           AND (published_at IS NULL
                OR published_at < now() - make_interval(
                       secs => CASE WHEN lane = ANY(:busy) THEN :busy_age ELSE :age END))
         ORDER BY created_at
         LIMIT :limit
         FOR UPDATE SKIP LOCKED)
 RETURNING id, lane
    """
)


_LANES_WITH_OLD = text(
    """
    SELECT lane FROM unnest(CAST(:lanes AS text[])) AS lanes(lane)
     WHERE EXISTS (SELECT 1 FROM jobs
                    WHERE jobs.lane = lanes.lane AND status = 'queued'
                      AND (published_at IS NULL
                           OR created_at < now() - make_interval(secs => :age)))
    """
)


def lanes_with_old_jobs(session: Session, lanes: Sequence[str], older_than_s: float) -> list[str]:
    """The lanes holding a queued job never published, or created more than ``older_than_s``
    ago: only their jobs can be due for publishing again (found at the first such job)."""
    params = {"lanes": list(lanes), "age": older_than_s}
    return [row[0] for row in session.execute(_LANES_WITH_OLD, params)]


def take_unpublished(
    session: Session,
    older_than_s: float,
    limit: int = 1000,
    busy_lanes: Sequence[str] = (),
    busy_older_than_s: float | None = None,
) -> list[tuple[uuid.UUID, str]]:
    """Queued jobs never published, or published more than ``older_than_s`` ago (in
    ``busy_lanes``, more than ``busy_older_than_s`` ago); stamps them as published now."""
    params = {
        "age": older_than_s,
        "busy": list(busy_lanes),
        "busy_age": older_than_s if busy_older_than_s is None else busy_older_than_s,
        "limit": limit,
    }
    return [(row[0], row[1]) for row in session.execute(_STALE, params)]


_QUEUED_BEFORE = text(
    """
    UPDATE jobs SET published_at = now()
     WHERE id IN (
        SELECT id FROM jobs
         WHERE status = 'queued' AND published_at < :cutoff
         ORDER BY created_at
         LIMIT :limit
         FOR UPDATE SKIP LOCKED)
 RETURNING id, lane
    """
)


def database_now(session: Session) -> dt.datetime:
    """The database's clock (the times ``published_at`` is compared with)."""
    return session.scalars(select(func.now())).one()


def take_queued_before(
    session: Session, cutoff: dt.datetime, limit: int = 1000
) -> list[tuple[uuid.UUID, str]]:
    """Queued jobs last published before ``cutoff`` (a database time), however recently:
    their messages went with a broker that lost its data. Stamps them as published now, so
    a second call with the same ``cutoff`` takes the next ones. Jobs never published are
    left to :func:`take_unpublished`."""
    return [
        (row[0], row[1])
        for row in session.execute(_QUEUED_BEFORE, {"cutoff": cutoff, "limit": limit})
    ]
