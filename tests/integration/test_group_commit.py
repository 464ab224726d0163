"""Submits that arrive together are committed in one transaction on the real Postgres
(api.services.inserter), and a 202 still means the job is durable."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import func, select, text
from sqlalchemy.exc import DataError

from api.services.inserter import GroupInserter
from api.state import ApiState
from db.jobs import queued_job_values
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


def test_a_lost_commit_fails_every_request_of_its_group_and_creates_none(
    app: Flask, keys: Keys, monkeypatch: pytest.MonkeyPatch, no_worker: None
) -> None:
    # Given a Postgres that drops the inserter's connection after its INSERT, before the
    # commit, every time (the one retry on a fresh connection included)
    import api.services.inserter as inserter_module

    st: ApiState = app.extensions["inferq"]
    gate = Gate(st.inserter)
    real_insert = inserter_module.insert_queued_jobs
    killed: list[int] = []

    def insert_then_lose_connection(session: Any, rows: list[dict[str, Any]]) -> list[Job]:
        jobs = real_insert(session, rows)
        pid = session.scalar(text("SELECT pg_backend_pid()"))
        with st.sessions() as other:
            other.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        killed.append(pid)
        return jobs

    monkeypatch.setattr(inserter_module, "insert_queued_jobs", insert_then_lose_connection)
    inputs = holdout(6)
    answers, submit = plain_submits(app, keys.alice, inputs, "lost-")

    # When six submits share a group
    behind_a_held_group(gate, submit, 5)

    # Then each got a 503 saying nothing changed, and no job of theirs exists
    assert gate.sizes == [1, 5]
    assert len(killed) == 4  # each group: its attempt and the retry on a fresh connection
    assert sorted(answer.status_code for answer in answers.values()) == [503] * 6
    assert all("nothing was changed" in a.get_json()["detail"] for a in answers.values())
    with st.sessions() as session:
        users = [f"lost-{i}" for i in range(6)]
        count = session.scalar(select(func.count()).select_from(Job).where(Job.user.in_(users)))
    assert count == 0
    # and the next submit, on a Postgres that is well again, is accepted
    monkeypatch.setattr(inserter_module, "insert_queued_jobs", real_insert)
    again = Caller(app.test_client(), keys.alice).post(
        "/v1/jobs", {"model": "digits", "input": inputs[0][0]}
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
