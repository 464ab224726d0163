"""Retention (scheduler/retention.py): jobs older than ``INFERQ_JOB_RETENTION`` go a whole
partition at a time, with what hangs off them; labelled feedback stays for retraining; a
batch's items stay until the batch expires; an expired job answers 410, an unknown one 404.

Each test runs in a database of its own with hour-wide partitions, made back in time."""

from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from api.app import create_app
from db.engine import make_engine, make_session_factory
from db.feedback import add_feedback
from db.ids import new_id, time_of
from db.jobs import get_job_view
from db.keys import create_key, ensure_tenant
from db.migrate import upgrade
from db.partitions import (
    DEPENDENTS,
    create_partition,
    floor_time,
    horizon,
    mirror,
    partition_name,
    partitions,
)
from db.training import labelled_feedback
from inferq.core.settings import Settings
from scheduler.retention import enforce
from tests.factories import bare_model
from tests.processes import ServiceProcess
from tests.services import Services, create_database

HOUR = dt.timedelta(hours=1)
#: "Now" for the jobs these tests make: an hour back, so that none is ahead of the clock
#: however long after import the test runs.
NOW = dt.datetime.now(dt.timezone.utc) - HOUR


@pytest.fixture
def own(services: Services, settings: Settings) -> Iterator[Settings]:
    """Settings on a fresh database with hour-wide partitions and a 6-hour retention, and
    partitions for the two days before NOW."""
    url, drop = create_database(services.postgres_url)
    upgrade(url, job_partition_s=3600)
    sessions = make_session_factory(make_engine(url))
    with sessions.begin() as session:
        # Up to the partitions the migration made from the clock's hour now (which may be
        # later than NOW, read when the module was imported).
        lower, made = floor_time(NOW, HOUR) - 48 * HOUR, partitions(session)[0].lower
        while lower < made:
            create_partition(session, lower, lower + HOUR)
            lower += HOUR
        mirror(session)  # and the same in the tables that hang off a job
    yield settings.replace(database_url=url, job_retention="6h", job_partition="1h")
    drop()


@pytest.fixture
def db(own: Settings) -> Iterator[Engine]:
    engine = create_engine(own.database_url or "")
    yield engine
    engine.dispose()


@pytest.fixture
def model(db: Engine) -> tuple[uuid.UUID, int, int]:
    """A tenant, a model and its version: ``(tenant_id, model_id, version_id)``."""
    with db.begin() as conn:
        return bare_model(conn)


def add_job(
    db: Engine,
    model: tuple[uuid.UUID, int, int],
    at: dt.datetime,
    label: Any = None,
    batch_id: uuid.UUID | None = None,
) -> uuid.UUID:
    """A succeeded job created at ``at`` (its id carries the time), with feedback (a label
    when given), a webhook with one delivery, an idempotency key and a shadow result."""
    tenant, model_id, version_id = model
    job_id = new_id(at)
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, created_at, tenant_id, model_id, version_id, lane, status,"
                " input, output, batch_id, batch_index) VALUES (:id, :at, :t, :m, :v, 'online',"
                " 'succeeded', CAST(:input AS jsonb), '{\"label\": 1}', :batch,"
                " CASE WHEN CAST(:batch AS uuid) IS NULL THEN NULL ELSE 0 END)"
            ),
            {
                "id": job_id,
                "at": time_of(job_id),
                "t": tenant,
                "m": model_id,
                "v": version_id,
                "input": json.dumps({"pixels": [at.hour] * 64}),
                "batch": batch_id,
            },
        )
        at = time_of(job_id)
        conn.execute(
            text(
                "INSERT INTO feedback (id, job_id, job_created_at, tenant_id, label, correct)"
                " VALUES (:f, :j, :at, :t, CAST(:label AS jsonb), true)"
            ),
            {"f": uuid.uuid4(), "j": job_id, "at": at, "t": tenant, "label": json.dumps(label)},
        )
        conn.execute(
            text(
                "INSERT INTO webhooks (job_id, job_created_at, url)"
                " VALUES (:j, :at, 'https://example.com/h')"
            ),
            {"j": job_id, "at": at},
        )
        conn.execute(
            text(
                "INSERT INTO webhook_deliveries (job_id, job_created_at, attempt, ok, status_code)"
                " VALUES (:j, :at, 1, true, 200)"
            ),
            {"j": job_id, "at": at},
        )
        conn.execute(
            text(
                "INSERT INTO shadow_results (job_id, job_created_at, version_id, experiment_id,"
                " arm, status, output) VALUES (:j, :at, :v, :e, 'b', 'succeeded', '{}')"
            ),
            {"j": job_id, "at": at, "v": version_id, "e": uuid.uuid4()},
        )
        key_id = create_key_row(conn, tenant)
        conn.execute(
            text(
                "INSERT INTO idempotency_keys (key_id, key, fingerprint, job_id)"
                " VALUES (:k, :key, repeat('a', 64), :j)"
            ),
            {"k": key_id, "key": str(job_id), "j": job_id},
        )
    return job_id


def create_key_row(conn: Any, tenant: uuid.UUID) -> uuid.UUID:
    key_id = conn.scalar(
        text("SELECT id FROM api_keys WHERE tenant_id = :t LIMIT 1"), {"t": tenant}
    )
    if key_id is None:
        key_id = uuid.uuid4()
        conn.execute(
            text(
                "INSERT INTO api_keys (id, tenant_id, prefix, key_hash, scopes)"
                " VALUES (:k, :t, :p, repeat('b', 64), ARRAY['read'])"
            ),
            {"k": key_id, "t": tenant, "p": key_id.hex[:12]},
        )
    return key_id


def count(db: Engine, table: str) -> int:
    with db.connect() as conn:
        return int(conn.scalar(text(f"SELECT count(*) FROM {table}")) or 0)


def record_row_deletes(db: Engine) -> None:
    """Note every row deleted from a table that hangs off a job in ``row_deletes``."""
    with db.begin() as conn:
        conn.execute(text("CREATE TABLE row_deletes (tbl text)"))
        conn.execute(
            text(
                "CREATE FUNCTION note_delete() RETURNS trigger LANGUAGE plpgsql AS"
                " $$ BEGIN INSERT INTO row_deletes VALUES (TG_TABLE_NAME); RETURN OLD; END $$"
            )
        )
        for table in DEPENDENTS:  # cloned onto every partition, made now or later
            conn.execute(
                text(
                    f"CREATE TRIGGER {table}_deletes AFTER DELETE ON {table}"
                    " FOR EACH ROW EXECUTE FUNCTION note_delete()"
                )
            )


def test_a_pass_drops_whole_expired_partitions_and_what_hangs_off_them(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int]
) -> None:
    """Catches: retention that deletes nothing, deletes recent jobs, leaves orphans in the
    tables that hang off a job, deletes their rows one by one (``DELETE FROM feedback …``
    before the detach: checked) instead of dropping their partitions, or leaves their
    partitions behind; and partitions ahead made for jobs only (checked: ``ensure_ahead``
    without ``mirror``)."""
    old = [add_job(db, model, NOW - hours * HOUR) for hours in (30, 20, 10)]
    recent = [add_job(db, model, NOW - hours * HOUR) for hours in (3, 1, 0)]
    sessions = make_session_factory(make_engine(own.database_url or ""))
    before = {p.name for p in partitions(sessions())}
    record_row_deletes(db)

    # More ahead than the migration made: this pass makes some.
    report = enforce(sessions, own.replace(partitions_ahead=8))

    after = {p.name for p in partitions(sessions())}
    assert report.dropped and set(report.dropped) == before - after
    cutoff = NOW - 6 * HOUR
    assert all(p.upper > cutoff - HOUR for p in partitions(sessions()))  # every expired one went
    with db.connect() as conn:
        left = {row[0] for row in conn.execute(text("SELECT id FROM jobs"))}
        tables = [r[0] for r in conn.execute(text("SELECT tablename FROM pg_tables"))]
    assert left == set(recent) and not set(old) & left
    assert not set(report.dropped) & set(tables)  # detached and dropped, not left lying about
    for table in (*DEPENDENTS, "idempotency_keys"):
        assert count(db, table) == len(recent), table
    # The dependents lost the same partitions, whole: dropped, not emptied row by row.
    twins = {name.replace("jobs", table) for name in report.dropped for table in DEPENDENTS}
    assert set(report.dropped_dependents) == twins
    assert not twins & set(tables)
    assert count(db, "row_deletes") == 0
    # Partitions ahead of now exist for the next jobs, and for what will hang off them.
    with sessions() as session:
        spans = [(p.lower, p.upper) for p in partitions(session)]
        assert max(upper for _, upper in spans) >= NOW + 8 * HOUR
        assert {name.split("_p")[0] for name in report.made} == {"jobs", *DEPENDENTS}
        for table in DEPENDENTS:
            assert [(p.lower, p.upper) for p in partitions(session, table)] == spans, table


def test_a_busy_dependent_keeps_its_partition_until_the_next_pass(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int]
) -> None:
    """Catches: a pass cut short after the partition of jobs went that never drops the
    dependents' (they would outlive their jobs for ever): checked by making
    ``expired_spans`` read the partitions of ``jobs`` only."""
    add_job(db, model, NOW - 30 * HOUR)
    kept = add_job(db, model, NOW - HOUR)
    sessions = make_session_factory(make_engine(own.database_url or ""))
    with db.begin() as conn:
        conn.execute(text("LOCK TABLE webhooks IN ACCESS SHARE MODE"))
        first = enforce(sessions, own)
    # The oldest partition of jobs went, and feedback's twin; webhooks' could not.
    assert len(first.dropped) == 1
    old = first.dropped[0].replace("jobs", "webhooks")
    assert first.dropped_dependents == [first.dropped[0].replace("jobs", "feedback")]
    with sessions() as session:
        assert old in {p.name for p in partitions(session, "webhooks")}

    second = enforce(sessions, own)

    assert old in second.dropped_dependents
    with sessions() as session:
        for table in DEPENDENTS:
            assert not [p for p in partitions(session, table) if p.upper <= NOW - 6 * HOUR]
    with db.connect() as conn:
        assert conn.scalar(text("SELECT job_id FROM webhooks")) == kept


def test_writes_for_a_job_retention_took_write_nothing(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int]
) -> None:
    """Catches: feedback, a webhook delivery or a shadow result written after the job's
    partition went (read before it went): an insert with no partition to go to fails.
    Checked by dropping, one at a time, the job check in ``add_feedback``, the webhook check
    in ``record_delivery`` and the join with jobs in ``store_shadow_results``."""
    from db.experiments import store_shadow_results
    from db.webhooks import record_delivery

    tenant, _, version_id = model
    gone = add_job(db, model, NOW - 30 * HOUR)
    sessions = make_session_factory(make_engine(own.database_url or ""))
    assert enforce(sessions, own).dropped_dependents

    with sessions.begin() as session:
        at = time_of(gone)
        assert at is not None
        row = add_feedback(session, job_id=gone, job_created_at=at, tenant_id=tenant, label=1)
        attempt = record_delivery(
            session,
            gone,
            redelivery=False,
            ok=True,
            status_code=200,
            error=None,
            duration_ms=1.0,
            final=True,
        )
        copy = {"job_id": str(gone), "version_id": version_id, "experiment_id": str(uuid.uuid4())}
        stored = store_shadow_results(
            session, [{**copy, "arm": "b", "status": "succeeded", "output": {}}], "w"
        )
    assert (row, attempt, stored) == (None, 0, 0)


def test_labelled_jobs_are_kept_for_retraining_when_their_partition_goes(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int]
) -> None:
    """Catches: retention that throws away the feedback retraining learns from."""
    labelled = add_job(db, model, NOW - 30 * HOUR, label=7)
    add_job(db, model, NOW - 30 * HOUR, label=None)  # a verdict without a label: not kept
    live = add_job(db, model, NOW - HOUR, label=3)
    sessions = make_session_factory(make_engine(own.database_url or ""))

    report = enforce(sessions, own)

    assert report.kept_examples == 1
    with sessions() as session:
        found = {row.job_id: row.label for row in labelled_feedback(session, model[1])}
    assert found == {labelled: 7, live: 3}
    # A second pass keeps nothing twice.
    assert enforce(sessions, own).kept_examples == 0
    assert count(db, "training_examples") == 1


def test_training_examples_stop_at_what_retraining_reads(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: a training-examples table that grows for ever."""
    import scheduler.retention

    monkeypatch.setattr(scheduler.retention, "TRAINING_WINDOW", 2)
    made = {
        hours: add_job(db, model, NOW - hours * HOUR, label=hours % 10)
        for hours in (40, 30, 20, 10)
    }
    sessions = make_session_factory(make_engine(own.database_url or ""))
    report = enforce(sessions, own)
    assert report.kept_examples == 4 and report.trimmed_examples == 2
    with db.connect() as conn:
        kept = {row[0] for row in conn.execute(text("SELECT job_id FROM training_examples"))}
    assert kept == {made[20], made[10]}  # the newest two


def test_a_batch_not_yet_expired_holds_its_items(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int]
) -> None:
    """Catches: a batch whose results vanish while the batch can still be read."""
    tenant, model_id, version_id = model
    batch_id = new_id(NOW - 20 * HOUR)
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO batches (id, tenant_id, model_id, version_id, status, total,"
                " created_at, completed_at) VALUES (:b, :t, :m, :v, 'completed', 1, :at, :done)"
            ),
            {
                "b": batch_id,
                "t": tenant,
                "m": model_id,
                "v": version_id,
                "at": time_of(batch_id),
                "done": NOW - 2 * HOUR,  # completed 2 h ago: expires in 4 h
            },
        )
    item = add_job(db, model, NOW - 20 * HOUR, batch_id=batch_id)
    older = add_job(db, model, NOW - 30 * HOUR)
    sessions = make_session_factory(make_engine(own.database_url or ""))

    report = enforce(sessions, own)

    assert report.held_by_batch
    with db.connect() as conn:
        left = {row[0] for row in conn.execute(text("SELECT id FROM jobs"))}
    assert item in left and older not in left
    assert count(db, "batches") == 1

    # Once the batch is as old as the retention, it goes with its items.
    with db.begin() as conn:
        conn.execute(text("UPDATE batches SET completed_at = :t"), {"t": NOW - 7 * HOUR})
    report = enforce(sessions, own)
    assert not report.held_by_batch and report.deleted_batches == 1
    with db.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM jobs WHERE id = :j"), {"j": item}) == 0


def test_an_expired_job_answers_410_and_an_unknown_one_404(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int]
) -> None:
    """Catches: an expired job that reads as never having existed (404), or a 410 for any
    id at all. A legacy (UUIDv4) id stays 404: it carries no time, and nothing records
    which ones existed."""
    gone = add_job(db, model, NOW - 30 * HOUR)
    kept = add_job(db, model, NOW - HOUR)
    sessions = make_session_factory(make_engine(own.database_url or ""))
    enforce(sessions, own)
    with sessions.begin() as session:
        key = create_key(session, ensure_tenant(session, "acme"), ["read", "submit"])[0]
    http = create_app(own).test_client()
    headers = {"Authorization": f"Bearer {key}"}

    answer = http.get(f"/v1/jobs/{gone}", headers=headers)
    assert answer.status_code == 410, answer.get_json()
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert "expired" in answer.get_json()["detail"]
    assert http.get(f"/v1/jobs/{kept}", headers=headers).status_code == 200
    # An id from after the horizon that names no job, and an id that carries no time.
    assert http.get(f"/v1/jobs/{new_id()}", headers=headers).status_code == 404
    assert http.get(f"/v1/jobs/{uuid.uuid4()}", headers=headers).status_code == 404
    assert http.post(f"/v1/jobs/{gone}/cancel", headers=headers).status_code == 410
    assert http.get(f"/v1/batches/{new_id(NOW - 40 * HOUR)}", headers=headers).status_code == 410


def test_a_job_dropped_after_the_horizon_was_cached_answers_410_at_once(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int]
) -> None:
    """An API process caches the retention horizon for a minute; a job whose partition goes
    inside that minute is still gone, not unknown. Catches: ``expired`` answering from the
    cached horizon alone (tried: the fresh read in api/services/jobs.py removed: 404)."""
    # Given an API on a 3-hour retention that has cached the horizon of an earlier pass
    # (a 6-hour one), and a job that pass left
    api = own.replace(job_retention="3h")
    early = add_job(db, model, NOW - 30 * HOUR)
    later = add_job(db, model, NOW - 4 * HOUR)
    sessions = make_session_factory(make_engine(own.database_url or ""))
    assert enforce(sessions, own).dropped
    with sessions.begin() as session:
        key = create_key(session, ensure_tenant(session, "acme"), ["read", "submit"])[0]
    http = create_app(api).test_client()
    headers = {"Authorization": f"Bearer {key}"}
    assert http.get(f"/v1/jobs/{early}", headers=headers).status_code == 410
    assert http.get(f"/v1/jobs/{later}", headers=headers).status_code == 200

    # When the next pass drops the later job's partition, within the cache's minute
    assert enforce(sessions, api).dropped

    # Then it answers 410 at once, and so does its cancel
    answer = http.get(f"/v1/jobs/{later}", headers=headers)
    assert answer.status_code == 410, answer.get_json()
    assert http.post(f"/v1/jobs/{later}/cancel", headers=headers).status_code == 410
    # while an id younger than the retention that names no job stays 404
    assert http.get(f"/v1/jobs/{new_id(NOW - HOUR)}", headers=headers).status_code == 404


def test_a_job_reads_as_expired_from_the_commit_that_detaches_its_partition(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int]
) -> None:
    """Between detaching a partition of ``jobs`` and the end of the pass, a reader must not
    find its jobs neither present nor expired. Catches: the horizon recorded only at the end
    of the pass, in a later transaction (seen in CI through PgBouncer: 404 for an expired
    job read in that gap)."""
    from scheduler.retention import RetentionReport, _retire

    # Given an expired job, and an API that has never read the horizon
    gone = add_job(db, model, NOW - 30 * HOUR)
    lower = floor_time(NOW - 30 * HOUR, HOUR)
    sessions = make_session_factory(make_engine(own.database_url or ""))
    with sessions.begin() as session:
        key = create_key(session, ensure_tenant(session, "acme"), ["read", "submit"])[0]
    http = create_app(own).test_client()
    headers = {"Authorization": f"Bearer {key}"}

    # When the scheduler has retired its span, and the rest of the pass has not run
    assert _retire(sessions, lower, lower + HOUR, RetentionReport())
    with sessions() as session:
        assert partition_name(lower) not in {p.name for p in partitions(session)}

    # Then the job already answers 410 Gone
    answer = http.get(f"/v1/jobs/{gone}", headers=headers)
    assert answer.status_code == 410, answer.get_json()


def test_the_scheduler_process_makes_partitions_ahead_and_drops_expired_ones(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int], tmp_path: Any
) -> None:
    """The retention thread as ``inferq beat`` starts it, on a short interval: nobody calls
    ``enforce`` here. Catches: a scheduler that never runs retention (tried: the
    ``inferq-retention`` thread removed from scheduler/service.py: no partition made ahead,
    the expired one never dropped, the wait below times out)."""
    # Given an expired job and a recent one, and a scheduler asked for more partitions
    # ahead than the migration made
    old = add_job(db, model, NOW - 30 * HOUR)
    recent = add_job(db, model, NOW - HOUR)
    sessions = make_session_factory(make_engine(own.database_url or ""))
    ahead = 8
    with sessions() as session:
        assert max(p.upper for p in partitions(session)) < NOW + ahead * HOUR
    scheduler = own.replace(
        retention_interval_s=0.5,
        partitions_ahead=ahead,
        reconcile_interval_s=3600.0,
        experiment_interval_s=3600.0,
        retrain_check_interval_s=3600.0,
        namespace=f"ret{uuid.uuid4().hex[:6]}",
        home=tmp_path / "home",
    )

    # When the scheduler runs on its own for a while
    beat = ServiceProcess("beat", ["beat"], scheduler, tmp_path)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and beat.alive():
            with sessions() as session:
                found, gone_since = partitions(session), horizon(session)
            # (the horizon moves span by span, as each expired partition goes)
            done = gone_since is not None and gone_since > NOW - 7 * HOUR
            if done and found[-1].upper >= NOW + (ahead + 1) * HOUR:
                break
            time.sleep(0.3)
    finally:
        beat.stop()

    # Then it made partitions ahead of now and dropped the expired ones, with their job
    assert found[-1].upper >= NOW + (ahead + 1) * HOUR, (found[-1], beat.log()[-3000:])
    assert gone_since is not None and gone_since > NOW - 7 * HOUR, beat.log()[-3000:]
    assert all(p.upper > NOW - 7 * HOUR for p in found)
    with db.connect() as conn:
        left = {row[0] for row in conn.execute(text("SELECT id FROM jobs"))}
    assert old not in left and recent in left


def test_two_schedulers_never_retire_at_once(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int]
) -> None:
    """Catches: a second scheduler's pass racing the first (the advisory lock)."""
    add_job(db, model, NOW - 30 * HOUR)
    sessions = make_session_factory(make_engine(own.database_url or ""))
    with db.begin() as conn:
        conn.execute(text("SELECT pg_advisory_xact_lock(7311224002)"))
        report = enforce(sessions, own)  # another holds the lock: nothing done
        assert report.dropped == [] and report.made == []
    assert enforce(sessions, own).dropped


def test_a_busy_jobs_table_makes_retention_wait_for_the_next_pass(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int]
) -> None:
    """Catches: a detach that waits behind a long query (and stalls every writer behind
    it) instead of giving up after its lock timeout."""
    old = add_job(db, model, NOW - 30 * HOUR)
    sessions = make_session_factory(make_engine(own.database_url or ""))
    with db.begin() as conn:
        conn.execute(text("LOCK TABLE jobs IN ACCESS SHARE MODE"))
        report = enforce(sessions, own)
        assert report.dropped == []
    with db.connect() as conn:
        assert conn.scalar(text("SELECT count(*) FROM jobs WHERE id = :j"), {"j": old}) == 1
        assert count(db, "feedback") == 1  # the retire transaction rolled back whole
    assert enforce(sessions, own).dropped


def test_the_migration_moves_existing_jobs_into_partitions(services: Services) -> None:
    """Catches: a migration that loses jobs, or leaves what hangs off them unlinked, or
    (0012) does not move the dependents' rows into their partitions (checked: 0012 copying
    nothing)."""
    url, drop = create_database(services.postgres_url)
    try:
        upgrade(url, "0008")
        engine = create_engine(url)
        tenant, job_id = uuid.uuid4(), uuid.uuid4()
        created = NOW - 50 * HOUR
        with engine.begin() as conn:
            conn.execute(text("INSERT INTO tenants (id, name) VALUES (:t, 'old')"), {"t": tenant})
            model_id = conn.scalar(
                text(
                    "INSERT INTO models (name, handler, input_schema) VALUES"
                    " ('digits', 'digits', '{}') RETURNING id"
                )
            )
            version_id = conn.scalar(
                text(
                    "INSERT INTO model_versions (model_id, version, artifact_uri, sha256,"
                    " size_bytes, status, created_by) VALUES"
                    " (:m, 1, 'file:///x', repeat('0', 64), 1, 'active', 't') RETURNING id"
                ),
                {"m": model_id},
            )
            conn.execute(
                text(
                    "INSERT INTO jobs (id, tenant_id, model_id, version_id, lane, status, input,"
                    " created_at) VALUES (:j, :t, :m, :v, 'online', 'succeeded', '{}', :at)"
                ),
                {"j": job_id, "t": tenant, "m": model_id, "v": version_id, "at": created},
            )
            add_dependents_at_0008(conn, job_id, tenant, model_id, version_id)
        upgrade(url, job_partition_s=86_400)
        with engine.begin() as conn:
            assert conn.scalar(text("SELECT count(*) FROM jobs WHERE id = :j"), {"j": job_id}) == 1
            where = conn.scalar(
                text("SELECT tableoid::regclass::text FROM jobs WHERE id = :j"), {"j": job_id}
            )
            assert where == f"jobs_p{created:%Y%m%d}"
            # Migration 0012: each dependent's row moved into its twin of that partition.
            for table in (*DEPENDENTS, "idempotency_keys"):
                rows = conn.execute(
                    text(f"SELECT tableoid::regclass::text, job_created_at FROM {table}")
                ).all()
                home = f"{table}_p{created:%Y%m%d}" if table in DEPENDENTS else table
                assert rows == [(home, created)], table
        engine.dispose()
        sessions = make_session_factory(make_engine(url))
        with sessions.begin() as session:
            names = [p.name for p in partitions(session)]
            for table in DEPENDENTS:  # the same bounds as jobs'
                twins = [p.name.replace(table, "jobs") for p in partitions(session, table)]
                assert twins == names, table
            # A legacy (UUIDv4) job still takes feedback, in its partition.
            view = get_job_view(session, job_id, tenant)
            assert view is not None and view.job.created_at == created
            assert add_feedback(
                session, job_id=job_id, job_created_at=created, tenant_id=tenant, correct=True
            )
        assert names[0] == f"jobs_p{created:%Y%m%d}" and len(names) >= 6
        with sessions() as session:
            assert session.scalar(text("SELECT count(DISTINCT job_created_at) FROM feedback")) == 1
    finally:
        drop()


def add_dependents_at_0008(
    conn: Any, job_id: uuid.UUID, tenant: uuid.UUID, model_id: int, version_id: int
) -> None:
    """A feedback, a webhook with a delivery, an idempotency key and a shadow result on
    ``job_id``, in the schema of migration 0008 (foreign keys, no ``job_created_at``)."""
    conn.execute(
        text("INSERT INTO feedback (id, job_id, tenant_id, label) VALUES (:f, :j, :t, '5')"),
        {"f": uuid.uuid4(), "j": job_id, "t": tenant},
    )
    conn.execute(
        text("INSERT INTO webhooks (job_id, url) VALUES (:j, 'https://example.com/h')"),
        {"j": job_id},
    )
    conn.execute(
        text("INSERT INTO webhook_deliveries (job_id, attempt, ok) VALUES (:j, 1, true)"),
        {"j": job_id},
    )
    key_id = create_key_row(conn, tenant)
    conn.execute(
        text(
            "INSERT INTO idempotency_keys (key_id, key, fingerprint, job_id)"
            " VALUES (:k, 'k1', repeat('a', 64), :j)"
        ),
        {"k": key_id, "j": job_id},
    )
    experiment = uuid.uuid4()
    conn.execute(
        text(
            "INSERT INTO experiments (id, model_id, mode, arms, policy, created_by)"
            " VALUES (:e, :m, 'shadow', '[]', '{}', 'test')"
        ),
        {"e": experiment, "m": model_id},
    )
    conn.execute(
        text(
            "INSERT INTO shadow_results (job_id, version_id, experiment_id, arm, status)"
            " VALUES (:j, :v, :e, 'b', 'succeeded')"
        ),
        {"j": job_id, "v": version_id, "e": experiment},
    )


def test_a_job_id_carries_its_creation_time() -> None:
    at = dt.datetime(2026, 12, 4, 12, 30, 15, 123000, tzinfo=dt.timezone.utc)
    ident = new_id(at)
    assert ident.version == 7 and time_of(ident) == at
    assert time_of(uuid.uuid4()) is None
    assert new_id(at) != ident  # the rest is random


def test_postgres_reads_the_same_time_from_an_id(db: Engine) -> None:
    ident = new_id()
    with db.connect() as conn:
        assert conn.scalar(text("SELECT job_time(:i)"), {"i": ident}) == time_of(ident)
        assert conn.scalar(text("SELECT job_time(:i)"), {"i": uuid.uuid4()}) is None


def test_the_partition_helpers_agree_with_postgres(own: Settings) -> None:
    sessions = make_session_factory(make_engine(own.database_url or ""))
    lower = floor_time(NOW, HOUR) + 10 * HOUR
    with sessions.begin() as session:
        name = create_partition(session, lower, lower + HOUR)
    with sessions() as session:
        found = {p.name: p for p in partitions(session)}
    assert found[name].lower == lower and found[name].upper == lower + HOUR


def test_a_claim_reads_only_the_partition_its_ids_name(own: Settings, db: Engine) -> None:
    """Catches: claims that probe every partition's index (a week of them). The claim is a
    function whose plan is made once per connection, for any ids (migration 0016): its
    statement is planned here the same way, generic, and run on ids of one partition."""
    from db.jobs import time_window

    ids = [new_id(NOW - 20 * HOUR), new_id(NOW - 20 * HOUR)]
    since, until = time_window(ids)
    assert (since, until) == (min(map(time_of, ids)), max(map(time_of, ids)))  # type: ignore[type-var]
    assert time_window([*ids, uuid.uuid4()]) == ("-infinity", "infinity")
    with db.connect() as conn:
        source = conn.scalar(text("SELECT prosrc FROM pg_proc WHERE proname = 'inferq_claim_jobs'"))
    assert source is not None
    statement = source[source.index("UPDATE") : source.rindex(";")]
    for n, name in enumerate(("p_ids", "p_fetched", "p_worker", "p_since", "p_until"), 1):
        statement = re.sub(rf"\b{name}\b", f"${n}", statement)
    with db.connect() as conn, conn.begin():
        conn.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        conn.execute(text("SET LOCAL enable_seqscan = off"))
        conn.exec_driver_sql(
            "PREPARE claim(uuid[], float8[], text, timestamptz, timestamptz) AS " + statement
        )
        plan = conn.exec_driver_sql(
            "EXPLAIN (ANALYZE, FORMAT JSON) EXECUTE claim(%s::uuid[], %s::float8[], 'w', %s, %s)",
            ([str(i) for i in ids], [None, 1.0], since, until),
        ).scalar_one()
        conn.exec_driver_sql("DEALLOCATE claim")
    nodes = list(walk(plan[0]["Plan"]))
    scanned = {
        n["Relation Name"] for n in nodes if "Scan" in n["Node Type"] and "Relation Name" in n
    }
    assert scanned == {partition_name(floor_time(NOW - 20 * HOUR, HOUR))}, plan
    assert any(n.get("Subplans Removed", 0) > 0 for n in nodes), plan  # pruned as it ran


def test_a_claim_commits_without_waiting_for_its_flush_and_a_store_waits(
    db: Engine, model: tuple[uuid.UUID, int, int]
) -> None:
    """Catches: a claim that waits for its WAL flush (0.15-0.25 ms on the way of every batch),
    and the setting outliving the claim's transaction into the store's, whose commit must wait:
    a finished job is durable before anyone is told of it."""
    from db.jobs import JobResult, claim_jobs, store_results

    tenant, model_id, version_id = model
    job = new_id(NOW)
    with db.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO jobs (id, created_at, tenant_id, model_id, version_id, lane,"
                " status, input) VALUES (:id, :at, :t, :m, :v, 'online', 'queued', '{}')"
            ),
            {"id": job, "at": time_of(job), "t": tenant, "m": model_id, "v": version_id},
        )
    setting = text("SELECT current_setting('synchronous_commit')")
    with db.connect() as conn:
        # Given a claim in its own transaction
        with conn.begin():
            claimed = claim_jobs(conn, [job], "w", [time.time()])
            # Then that transaction commits without waiting
            assert [c.id for c in claimed] == [job] and claimed[0].attempts == 1
            assert conn.scalar(setting) == "off"
        # And the store's transaction, on the same connection, waits
        with conn.begin():
            assert conn.scalar(setting) == "on"
            done = JobResult(job, "succeeded", output={"label": 1}, batch_size=1, predict_ms=0.1)
            stored = store_results(conn, [done], "w")
            assert [(s.id, s.status, s.hooked) for s in stored] == [(job, "succeeded", False)]
            assert conn.scalar(setting) == "on"
        # and a second claim of the job takes nothing
        with conn.begin():
            assert claim_jobs(conn, [job], "other") == []


def test_making_a_partition_does_not_block_writers(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int]
) -> None:
    """Catches: a partition made with ``CREATE TABLE … PARTITION OF``, whose exclusive lock on
    ``jobs`` stalls every submit until the scheduler's transaction ends."""
    sessions = make_session_factory(make_engine(own.database_url or ""))
    lower = floor_time(NOW, HOUR) + 20 * HOUR
    with sessions.begin() as session:
        create_partition(session, lower, lower + HOUR)  # held open while a writer comes
        with db.begin() as conn:
            conn.execute(text("SET LOCAL lock_timeout = 300"))
            tenant, model_id, version_id = model
            conn.execute(
                text(
                    "INSERT INTO jobs (id, created_at, tenant_id, model_id, version_id, lane,"
                    " status, input) VALUES (:id, :at, :t, :m, :v, 'online', 'queued', '{}')"
                ),
                {"id": new_id(), "at": NOW, "t": tenant, "m": model_id, "v": version_id},
            )
            assert conn.scalar(text("SELECT count(*) FROM jobs")) == 1


def test_writers_never_fail_while_partitions_come_and_go(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int]
) -> None:
    """Catches: making or dropping partitions (of jobs and of feedback) under load failing
    submits or feedback (a deadlock between the scheduler's DDL and the writers'
    foreign-key checks, seen in the soak benchmark)."""
    import threading

    from db.jobs import get_job_view
    from db.partitions import Partition
    from scheduler.retention import RetentionReport, _retire

    tenant, model_id, version_id = model
    report = RetentionReport()
    sessions = make_session_factory(make_engine(own.database_url or ""))
    stop, errors, written = threading.Event(), [], [0]

    def write() -> None:
        while not stop.is_set():
            try:
                with sessions.begin() as session:
                    job_id = new_id()
                    session.execute(
                        text(
                            "INSERT INTO jobs (id, created_at, tenant_id, model_id, version_id,"
                            " lane, status, input) VALUES (:id, :at, :t, :m, :v, 'online',"
                            " 'queued', '{}')"
                        ),
                        {"id": job_id, "at": time_of(job_id), "t": tenant, "m": model_id,
                         "v": version_id},
                    )  # fmt: skip
                    assert get_job_view(session, job_id, tenant) is not None
                    at = time_of(job_id)
                    assert at is not None
                    assert add_feedback(session, job_id=job_id, job_created_at=at, tenant_id=tenant)
                written[0] += 1
            except Exception as error:  # every failure is the finding
                errors.append(repr(error))

    writers = [threading.Thread(target=write) for _ in range(4)]
    for thread in writers:
        thread.start()
    try:
        ahead = floor_time(NOW, HOUR) + 10 * HOUR
        for step in range(30):
            with sessions.begin() as session:
                create_partition(session, ahead + step * HOUR, ahead + (step + 1) * HOUR)
                mirror(session)
            old = floor_time(NOW, HOUR) - (48 - step) * HOUR
            add_job(db, model, old + HOUR / 2)
            part = Partition(partition_name(old), old, old + HOUR)
            for _ in range(20):  # a busy table makes a retire wait for another try
                if _retire(sessions, part.lower, part.upper, report):
                    break
    finally:
        stop.set()
        for thread in writers:
            thread.join()
    assert errors == [] and written[0] > 0
    assert len(report.dropped) >= 25, report


def test_migration_0012_goes_back_and_forth_with_the_rows(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int]
) -> None:
    """Catches: a downgrade of 0012 that loses the dependents' rows, or leaves them without
    the trigger that fills ``job_created_at`` for 0011's writers (checked by removing it);
    an upgrade that loses them on the way back."""
    from db.migrate import downgrade

    job_id = add_job(db, model, NOW - 5 * HOUR)
    url = own.database_url or ""
    kinds = text("SELECT relkind FROM pg_class WHERE relname = :t")

    downgrade(url, "0011")

    with db.begin() as conn:
        for table in DEPENDENTS:
            assert conn.scalar(kinds, {"t": table}) == "r", table  # a plain table again
            assert conn.scalar(text(f"SELECT job_id FROM {table}")) == job_id, table
        conn.execute(
            text("INSERT INTO feedback (id, job_id, tenant_id) VALUES (:f, :j, :t)"),
            {"f": uuid.uuid4(), "j": job_id, "t": model[0]},
        )
        assert conn.scalar(text("SELECT count(DISTINCT job_created_at) FROM feedback")) == 1

    upgrade(url)

    with db.connect() as conn:
        for table in DEPENDENTS:
            assert conn.scalar(kinds, {"t": table}) == "p", table
            home = conn.scalar(text(f"SELECT DISTINCT tableoid::regclass::text FROM {table}"))
            assert home == partition_name(floor_time(NOW - 5 * HOUR, HOUR), table)
        assert count(db, "feedback") == 2


def test_idempotency_keys_go_once_expired_or_once_their_job_is_gone(
    own: Settings, db: Engine, model: tuple[uuid.UUID, int, int]
) -> None:
    """Catches: idempotency keys (a plain table, not partitioned) that outlive their job
    (a retry would find the key taken and no job) or their TTL, or go while still live.
    Checked by not calling ``purge_keys``, and by purging at the horizon only."""
    gone = add_job(db, model, NOW - 30 * HOUR)  # its partition goes
    stale = add_job(db, model, NOW - 3 * HOUR)  # kept, but its key is 4 h old: past the TTL
    live = add_job(db, model, NOW)  # an hour old
    sessions = make_session_factory(make_engine(own.database_url or ""))

    report = enforce(sessions, own.replace(idempotency_ttl_s=2 * 3600))

    assert report.deleted_idempotency_keys == 2
    with db.connect() as conn:
        keys = {row[0] for row in conn.execute(text("SELECT job_id FROM idempotency_keys"))}
        jobs = {row[0] for row in conn.execute(text("SELECT id FROM jobs"))}
    assert keys == {live} and jobs == {stale, live} and gone not in jobs


def walk(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from walk(child)
