"""Submits that arrive together are committed in one statement on the real Postgres
(api.services.inserter), and a 202 still means the job is durable."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import select, text
from sqlalchemy.exc import DataError

from api.services.inserter import GroupInserter
from api.state import ApiState
from db.engine import KeptConnection
from db.jobs import insert_queued_jobs, queued_job_values
from db.registry import serving_info
from db.tables import Job
from tests.conftest import Keys
from tests.factories import holdout, pixels
from tests.integration.conftest import Caller


class Gate:
    """Wraps the inserter's transaction: records each group's size; the first group waits
    until released, as a slow commit would, so that the requests after it pile up."""

    def __init__(self, inserter: GroupInserter) -> None:
        self.sizes: list[int] = []
        self.first_started = threading.Event()
        self.release = threading.Event()
        self.inserter = inserter
        self.real: Callable[[list[dict[str, Any]]], list[Job]] = inserter._commit
        inserter._commit = self._commit  # type: ignore[method-assign]

    def _commit(self, rows: list[dict[str, Any]]) -> list[Job]:
        self.sizes.append(len(rows))
        if len(self.sizes) == 1:
            self.first_started.set()
            self.release.wait(10)
        return self.real(rows)

    def wait_queued(self, count: int) -> None:
        """Until ``count`` rows wait behind the group in flight (bounded)."""
        for _ in range(1000):
            with self.inserter._cond:
                if len(self.inserter._waiting) >= count:
                    return
            threading.Event().wait(0.01)
        raise AssertionError(f"only {len(self.inserter._waiting)} of {count} rows were handed over")


def in_threads(work: Callable[[int], Any], count: int, start: int = 0) -> list[threading.Thread]:
    threads = [threading.Thread(target=work, args=(i,)) for i in range(start, start + count)]
    for thread in threads:
        thread.start()
    return threads


def behind_a_held_group(gate: Gate, work: Callable[[int], Any], later: int) -> None:
    """Run ``work(0)``, hold its group in flight, run ``work(1..later)`` meanwhile, then let
    everything finish."""
    threads = in_threads(work, 1)
    assert gate.first_started.wait(10)
    threads += in_threads(work, later, start=1)
    gate.wait_queued(later)
    gate.release.set()
    for thread in threads:
        thread.join(30)


def plain_submits(
    app: Flask, key: str, inputs: list[Any], user: str
) -> tuple[dict[int, Any], Callable[[int], None]]:
    """Where the answers go, and a ``submit(i)`` that posts ``inputs[i]`` as a plain (grouped)
    submit of the user ``{user}{i}``, keeping its answer under ``i``."""
    answers: dict[int, Any] = {}

    def submit(i: int) -> None:
        answers[i] = Caller(app.test_client(), key).post(
            "/v1/jobs", {"model": "digits", "input": inputs[i][0], "user": f"{user}{i}"}
        )

    return answers, submit


def existing(st: ApiState, ids: list[str]) -> set[str]:
    with st.sessions() as session:
        found = session.scalars(select(Job.id).where(Job.id.in_([uuid.UUID(i) for i in ids])))
        return {str(i) for i in found}


def test_submits_that_arrive_together_share_one_commit_and_each_202_is_durable(
    app: Flask, keys: Keys, no_worker: None
) -> None:
    # Given a first submit whose commit is held in flight
    st: ApiState = app.extensions["inferq"]
    gate = Gate(st.inserter)
    inputs = holdout(13)
    answers, submit = plain_submits(app, keys.alice, inputs, "u")

    # When twelve more arrive meanwhile
    behind_a_held_group(gate, submit, 12)

    # Then they went in as one more transaction, and every 202 names a committed job with
    # the input and user its request sent
    assert gate.sizes == [1, 12]
    assert sorted(answer.status_code for answer in answers.values()) == [202] * 13
    ids = {i: answer.get_json()["id"] for i, answer in answers.items()}
    with st.sessions() as session:
        rows = session.scalars(select(Job).where(Job.id.in_([uuid.UUID(v) for v in ids.values()])))
        stored = {str(job.id): job for job in rows}
    assert set(stored) == set(ids.values())
    for i, job_id in ids.items():
        job = stored[job_id]
        assert (job.status, job.user, job.input) == ("queued", f"u{i}", inputs[i][0])
        assert job.published_at is not None


def test_a_groups_rows_are_stored_column_for_column_as_given(app: Flask, keys: Keys) -> None:
    """The group's INSERT sends its rows as one JSON array that Postgres unpacks. Catches: a
    column dropped or mistyped on the way (a time off by its zone or its microseconds, an
    integer past 64 bits rounded, a quote or a non-ASCII letter mangled)."""
    st: ApiState = app.extensions["inferq"]
    with st.sessions() as session:
        digits = serving_info(session, "digits")
        tenant = session.scalar(text("SELECT id FROM tenants LIMIT 1"))
    assert digits is not None and digits.active_version_id is not None and tenant is not None
    inputs: list[Any] = [
        pixels(0.5),
        {"big": 12345678901234567890123, "f": [1e-7, 0.1, -2.5], "s": "é \" ' \\ \u2028"},
        ["a", None, True, {"nested": [[]]}],
    ]
    rows = [
        queued_job_values(
            tenant_id=tenant,
            model_id=digits.model_id,
            version_id=digits.active_version_id,
            lane=lane,
            input=value,
            user=user,
            experiment_id=experiment,
            arm=arm,
        )
        for value, lane, user, experiment, arm in zip(
            inputs,
            ["online", "batch", "online"],
            [None, 'Zoë "O\'Hara"', "u" * 256],
            [None, uuid.uuid4(), None],
            [None, "b", None],
            strict=True,
        )
    ]
    engine = st.sessions.kw["bind"]
    kept = KeptConnection(engine)

    # When they go in as one group
    try:
        returned = insert_queued_jobs(kept, rows)
    finally:
        kept.close()

    # Then each job holds every value it was given, and the time the server set
    with st.sessions() as session:
        stored = {
            job.id: job
            for job in session.scalars(select(Job).where(Job.id.in_([r["id"] for r in rows])))
        }
    for values, job in zip(rows, returned, strict=True):
        row = stored[values["id"]]
        assert {key: getattr(row, key) for key in values} == values
        assert job.id == values["id"] and job.published_at == row.published_at is not None
    assert type(stored[rows[1]["id"]].input["big"]) is int


def test_a_row_postgres_refuses_fails_only_its_own_request(app: Flask) -> None:
    # Given the inserter, a group in flight, and five rows behind it, one with a lane too long
    # for its column (the API's schema never lets one through; the inserter must not trust it)
    st: ApiState = app.extensions["inferq"]
    gate = Gate(st.inserter)
    with st.sessions() as session:
        digits = serving_info(session, "digits")
        tenant = session.scalar(text("SELECT id FROM tenants LIMIT 1"))
    assert digits is not None and digits.active_version_id is not None and tenant is not None

    def row(lane: str) -> dict[str, Any]:
        return queued_job_values(
            tenant_id=tenant,
            model_id=digits.model_id,
            version_id=digits.active_version_id,
            lane=lane,
            input=pixels(0.5),
        )

    rows = [
        row("online"),
        row("online"),
        row("online"),
        row("x" * 40),
        row("online"),
        row("online"),
    ]
    outcome: dict[int, Any] = {}

    def insert(i: int) -> None:
        try:
            outcome[i] = st.inserter.insert(rows[i])
        except Exception as exc:
            outcome[i] = exc

    # When they run
    behind_a_held_group(gate, insert, 5)

    # Then the group was tried whole, then row by row: only the bad row failed
    assert gate.sizes == [1, 5, 1, 1, 1, 1, 1]
    assert isinstance(outcome[3], DataError)
    good = [i for i in range(6) if i != 3]
    assert all(isinstance(outcome[i], Job) for i in good), outcome
    ids = [str(rows[i]["id"]) for i in range(6)]
    assert existing(st, ids) == {ids[i] for i in good}
    # and each request got its own job back
    assert [str(outcome[i].id) for i in good] == [ids[i] for i in good]


def scalar(session: Any, sql: str) -> Any:
    """The first value ``sql`` returns on ``session``: the inserter's kept connection
    (db.engine.KeptConnection) or SQLAlchemy's."""
    if isinstance(session, KeptConnection):
        rows = session.execute(sql, {})
        return rows[0][0] if rows else None
    return session.scalar(text(sql))


def lose_connection(st: ApiState, session: Any) -> int:
    """Have Postgres drop ``session``'s connection (from another one); returns its pid."""
    pid: int = scalar(session, "SELECT pg_backend_pid()")
    with st.sessions() as other:
        other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    return pid


def insert_then_lose_connection(
    st: ApiState, real_insert: Callable[..., list[Job]], killed: list[int]
) -> Callable[[Any, list[dict[str, Any]]], list[Job]]:
    """An insert_queued_jobs whose INSERT goes in, after which Postgres drops the connection
    before the inserter reads anything back: it committed, the caller sees a lost connection
    (each dropped backend's pid goes to ``killed``)."""

    def insert(session: Any, rows: list[dict[str, Any]]) -> list[Job]:
        real_insert(session, rows)
        killed.append(lose_connection(st, session))
        scalar(session, "SELECT 1")  # the connection is gone: this raises
        raise AssertionError("the connection survived")

    return insert


def jobs_of(st: ApiState, prefix: str, count: int) -> list[str]:
    """The users of the jobs submitted as ``{prefix}0..{count-1}``, one entry per job."""
    users = [f"{prefix}{i}" for i in range(count)]
    with st.sessions() as session:
        return sorted(session.scalars(select(Job.user).where(Job.user.in_(users))))


def test_a_connection_lost_after_the_insert_went_in_answers_each_request_202_once(
    app: Flask, keys: Keys, monkeypatch: pytest.MonkeyPatch, no_worker: None
) -> None:
    # Given a Postgres that drops the inserter's connection right after its INSERT went in,
    # before the inserter reads the answer back: the insert committed, the request only sees
    # a lost connection
    import api.services.inserter as inserter_module

    st: ApiState = app.extensions["inferq"]
    gate = Gate(st.inserter)
    killed: list[int] = []
    lossy = insert_then_lose_connection(st, inserter_module.insert_queued_jobs, killed)
    monkeypatch.setattr(inserter_module, "insert_queued_jobs", lossy)
    inputs = holdout(6)
    answers, submit = plain_submits(app, keys.alice, inputs, "after-")

    # When six submits share a group
    behind_a_held_group(gate, submit, 5)

    # Then the inserter found its rows on a fresh connection: every request got its 202,
    # and each job exists exactly once, under the id its answer names
    assert gate.sizes == [1, 5] and len(killed) == 2
    assert sorted(a.status_code for a in answers.values()) == [202] * 6, answers
    assert jobs_of(st, "after-", 6) == sorted(f"after-{i}" for i in range(6))
    ids = [a.get_json()["id"] for a in answers.values()]
    assert existing(st, ids) == set(ids)


def test_a_connection_lost_before_the_insert_ran_inserts_the_group_once_on_a_fresh_one(
    app: Flask, keys: Keys, monkeypatch: pytest.MonkeyPatch, no_worker: None
) -> None:
    # Given a Postgres that drops the inserter's connection just before each group's INSERT
    import api.services.inserter as inserter_module

    st: ApiState = app.extensions["inferq"]
    gate = Gate(st.inserter)
    real_insert = inserter_module.insert_queued_jobs
    calls: list[int] = []

    def lose_connection_then_insert(session: Any, rows: list[dict[str, Any]]) -> list[Job]:
        calls.append(len(rows))
        if len(calls) % 2 == 1:  # each group's first try; its second goes through
            lose_connection(st, session)
        return real_insert(session, rows)

    monkeypatch.setattr(inserter_module, "insert_queued_jobs", lose_connection_then_insert)
    inputs = holdout(6)
    answers, submit = plain_submits(app, keys.alice, inputs, "before-")

    # When six submits share a group
    behind_a_held_group(gate, submit, 5)

    # Then each group found none of its rows and inserted them again: 202s, one job each
    assert gate.sizes == [1, 5] and calls == [1, 1, 5, 5]
    assert sorted(a.status_code for a in answers.values()) == [202] * 6, answers
    assert jobs_of(st, "before-", 6) == sorted(f"before-{i}" for i in range(6))


def test_a_database_lost_for_good_answers_503_saying_the_job_may_exist(
    app: Flask, keys: Keys, monkeypatch: pytest.MonkeyPatch, no_worker: None
) -> None:
    # Given a Postgres that drops every connection of the inserter's, the INSERT's after it
    # went in and the one that would look for its rows before it can
    import api.services.inserter as inserter_module

    st: ApiState = app.extensions["inferq"]
    killed: list[int] = []
    lossy = insert_then_lose_connection(st, inserter_module.insert_queued_jobs, killed)

    def lose_connection_instead(session: Any, rows: list[dict[str, Any]]) -> dict[Any, Job]:
        lose_connection(st, session)
        scalar(session, "SELECT 1")
        raise AssertionError("the connection survived")

    monkeypatch.setattr(inserter_module, "insert_queued_jobs", lossy)
    monkeypatch.setattr(inserter_module, "find_inserted", lose_connection_instead)

    # When a plain submit runs
    answer = Caller(app.test_client(), keys.alice).post(
        "/v1/jobs", {"model": "digits", "input": holdout(1)[0][0], "user": "unknown-0"}
    )

    # Then it is a 503 that says the job may exist (here it does), never "nothing changed"
    problem = answer.get_json()
    assert answer.status_code == 503 and answer.headers["Retry-After"], problem
    assert "may exist" in problem["detail"] and "nothing was changed" not in problem["detail"]
    assert jobs_of(st, "unknown-", 1) == ["unknown-0"]


def test_an_insert_postgres_cancels_fails_every_request_of_its_group_and_creates_none(
    app: Flask, keys: Keys, no_worker: None
) -> None:
    # Given a Postgres that cancels any INSERT of a job whose user starts "cancelled-" (a
    # trigger raising query_canceled, as a statement timeout or an operator would)
    st: ApiState = app.extensions["inferq"]
    with st.sessions.begin() as session:
        session.execute(
            text(
                "CREATE FUNCTION test_cancel_insert() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN IF NEW.\"user\" LIKE 'cancelled-%' THEN "
                "RAISE EXCEPTION 'cancelled' USING ERRCODE = 'query_canceled'; END IF; "
                "RETURN NEW; END $$"
            )
        )
        session.execute(
            text(
                "CREATE TRIGGER test_cancel_insert BEFORE INSERT ON jobs "
                "FOR EACH ROW EXECUTE FUNCTION test_cancel_insert()"
            )
        )
    try:
        gate = Gate(st.inserter)
        inputs = holdout(6)
        answers, submit = plain_submits(app, keys.alice, inputs, "cancelled-")

        # When six submits share a group
        behind_a_held_group(gate, submit, 5)
    finally:
        with st.sessions.begin() as session:
            session.execute(text("DROP TRIGGER test_cancel_insert ON jobs"))
            session.execute(text("DROP FUNCTION test_cancel_insert()"))

    # Then each got a 503 saying nothing changed, and no job of theirs exists
    assert gate.sizes == [1, 5]
    assert sorted(answer.status_code for answer in answers.values()) == [503] * 6
    assert all("nothing was changed" in a.get_json()["detail"] for a in answers.values())
    assert jobs_of(st, "cancelled-", 6) == []
    # and the next submit, its user not cancelled, is accepted
    again = Caller(app.test_client(), keys.alice).post(
        "/v1/jobs", {"model": "digits", "input": inputs[0][0], "user": "fine-0"}
    )
    assert again.status_code == 202, again.get_json()
    assert existing(st, [again.get_json()["id"]]) == {again.get_json()["id"]}


def test_keyed_submits_beside_grouped_ones_still_make_one_job_per_key(
    app: Flask, keys: Keys, no_worker: None
) -> None:
    # Given four submits with an Idempotency-Key (their own transaction), each sent twice at
    # once, beside six plain ones (grouped)
    st: ApiState = app.extensions["inferq"]
    run = uuid.uuid4().hex[:8]
    inputs = holdout(6)
    answers: dict[int, tuple[int, str]] = {}

    def submit(i: int) -> None:
        keyed = i < 8
        headers = {"Idempotency-Key": f"mix-{run}-{i % 4}"} if keyed else {}
        pixels = inputs[i % 4 if keyed else i - 8][0]  # a key's two requests are the same
        answer = Caller(app.test_client(), keys.alice).post(
            "/v1/jobs", {"model": "digits", "input": pixels}, headers=headers
        )
        answers[i] = (answer.status_code, answer.get_json().get("id", answer.get_data(True)))

    # When all 14 arrive together
    threads = in_threads(submit, 14)
    for thread in threads:
        thread.join(30)

    # Then each key made one job, both its requests name it, and every plain submit made its own
    assert len(answers) == 14 and {status for status, _ in answers.values()} == {202}, answers
    for i in range(4):
        assert answers[i][1] == answers[i + 4][1]
    plain = [answers[i][1] for i in range(8, 14)]
    keyed = [answers[i][1] for i in range(4)]
    assert len(set(plain)) == 6 and len(set(keyed)) == 4
    assert existing(st, plain + keyed) == set(plain + keyed)


def test_a_submit_no_group_takes_in_time_is_answered_503_and_never_inserted(
    app: Flask, keys: Keys, no_worker: None
) -> None:
    # Given a commit held in flight longer than a submit may queue for one (a stalled Postgres)
    st: ApiState = app.extensions["inferq"]
    st.inserter._queue_timeout_s = 0.5
    gate = Gate(st.inserter)
    inputs = holdout(2)
    answers, submit = plain_submits(app, keys.alice, inputs, "late-")

    first = in_threads(submit, 1)
    assert gate.first_started.wait(10)
    # When another submit waits behind it past that
    submit(1)
    gate.release.set()
    first[0].join(30)

    # Then it is answered 503 with Retry-After, the held one 202, and only the held one exists
    late = answers[1]
    assert late.status_code == 503 and late.headers["Retry-After"], late.get_json()
    assert answers[0].status_code == 202
    assert gate.sizes == [1]
    with st.sessions() as session:
        users = session.scalars(select(Job.user).where(Job.user.in_(["late-0", "late-1"])))
        assert sorted(users) == ["late-0"]


def test_the_inserters_connection_goes_back_to_the_pool_as_it_came_when_its_thread_ends(
    app: Flask, keys: Keys, monkeypatch: pytest.MonkeyPatch, no_worker: None
) -> None:
    """Catches: a group thread that ends (idle) holding the connection it kept for its
    INSERTs in autocommit, which the pool would then hand to a session: its transactions
    would commit statement by statement."""
    import api.services.grouping as grouping

    monkeypatch.setattr(grouping, "IDLE_EXIT_S", 0.2)
    st: ApiState = app.extensions["inferq"]
    engine = st.sessions.kw["bind"]
    # Given a submit, whose group's thread keeps a connection for its INSERT
    answer = Caller(app.test_client(), keys.alice).post(
        "/v1/jobs", {"model": "digits", "input": holdout(1)[0][0]}
    )
    assert answer.status_code == 202
    held = engine.pool.checkedout()
    assert held >= 1
    # When the thread has had nothing to do for its idle time, then the pool has it back
    deadline = time.monotonic() + 5
    while engine.pool.checkedout() >= held and time.monotonic() < deadline:
        time.sleep(0.05)
    assert engine.pool.checkedout() == held - 1
    # and every connection it hands out is transactional again
    taken = [engine.raw_connection() for _ in range(engine.pool.size())]
    try:
        assert [fairy.dbapi_connection.autocommit for fairy in taken] == [False] * len(taken)
    finally:
        for fairy in taken:
            fairy.close()
