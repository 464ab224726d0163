"""Long-polls whose wait runs out are read in groups (api.services.progress), on the real
Postgres: one statement for many requests, each answered with its own tenant's job."""

from __future__ import annotations

import threading
import uuid
from typing import Any

import pytest
from flask import Flask
from sqlalchemy import event, text
from sqlalchemy.exc import OperationalError

from api.services import progress as progress_service
from api.services.progress import ProgressReader
from api.state import ApiState
from tests.conftest import Keys
from tests.factories import pixels
from tests.integration.conftest import Caller


class Statements:
    """Counts the statements of ``st``'s engine that read jobs' progress in groups."""

    def __init__(self, st: ApiState) -> None:
        self.count = 0
        self.engine: Any = st.sessions.kw["bind"]
        event.listen(self.engine, "before_cursor_execute", self._seen)

    def _seen(self, _conn: Any, _cursor: Any, statement: str, *_: Any) -> None:
        if "inferq_jobs_ahead" in statement and " IN (" in statement:
            self.count += 1

    def close(self) -> None:
        event.remove(self.engine, "before_cursor_execute", self._seen)


class Groups:
    """Wraps the reader's group read: records each group's size."""

    def __init__(self, reader: ProgressReader) -> None:
        self.sizes: list[int] = []
        real = reader._run_group

        def run(group: list[Any]) -> None:
            self.sizes.append(len(group))
            real(group)

        reader._run_group = run  # type: ignore[method-assign]


def queued_jobs(alice: Caller, count: int) -> list[str]:
    ids = []
    for n in range(count):
        response = alice.post("/v1/jobs", {"model": "digits", "input": pixels(float(n % 16))})
        assert response.status_code == 202, response.get_json()
        ids.append(str(response.get_json()["id"]))
    return ids


def together(work: list[Any]) -> None:
    threads = [threading.Thread(target=w) for w in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)


def test_long_polls_whose_wait_runs_out_together_are_read_in_one_statement(
    app: Flask, keys: Keys, no_worker: None
) -> None:
    """Catches: each expired long-poll reading its job on its own (a session, a pooled
    connection and a round trip per answer), or a group answer handed to the wrong request."""
    st: ApiState = app.extensions["inferq"]
    st.progress._gather_s = 1.0  # far longer than the requests take to start
    alice = Caller(app.test_client(), keys.alice)
    # Given three queued jobs, and their positions as a plain GET gives them
    ids = queued_jobs(alice, 3)
    plain = {i: alice.get(f"/v1/jobs/{i}").get_json() for i in ids}
    groups, statements = Groups(st.progress), Statements(st)
    answers: dict[int, Any] = {}

    def poll(n: int) -> None:
        caller = Caller(app.test_client(), keys.alice)
        answers[n] = caller.get(f"/v1/jobs/{ids[n % 3]}?wait=0.2")

    # When eight long-polls on them run out of wait together (two or three on each job)
    try:
        together([lambda n=n: poll(n) for n in range(8)])
    finally:
        statements.close()

    # Then one statement read them all, and each answer is its own job's, as a GET says
    assert groups.sizes == [8]
    assert statements.count == 1
    for n, answer in answers.items():
        body = answer.get_json()
        assert answer.status_code == 200, body
        assert body["id"] == ids[n % 3] and body["status"] == "queued"
        assert body["position"] == plain[ids[n % 3]]["position"]


def test_a_group_answers_each_tenant_for_its_own_jobs_only(
    app: Flask, keys: Keys, no_worker: None
) -> None:
    """Catches: a grouped read that hands a job to a request of another tenant (the group is
    read without a tenant condition; each request's tenant is checked against the row's)."""
    st: ApiState = app.extensions["inferq"]
    st.progress._gather_s = 1.0
    alice = Caller(app.test_client(), keys.alice)
    [job] = queued_jobs(alice, 1)
    with st.sessions() as session:
        owner = session.scalar(text("SELECT tenant_id FROM jobs WHERE id = :id"), {"id": job})
    stranger = uuid.uuid4()
    found: dict[str, Any] = {}
    groups = Groups(st.progress)

    # When the owner and another tenant read the job in one group
    together(
        [
            lambda: found.setdefault("owner", st.progress.read(uuid.UUID(job), owner)),
            lambda: found.setdefault("stranger", st.progress.read(uuid.UUID(job), stranger)),
            lambda: found.setdefault("nobody", st.progress.read(uuid.uuid4(), owner)),
        ]
    )

    # Then only the owner gets it; the other tenant's read and an unknown id get nothing
    assert groups.sizes == [3]
    assert found["owner"] is not None and found["owner"].status == "queued"
    assert found["stranger"] is None and found["nobody"] is None


def test_a_failed_group_read_answers_each_of_its_long_polls_503_and_the_next_group_reads(
    app: Flask, keys: Keys, no_worker: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: a group whose read failed leaving its requests hanging, or answering them
    with another's outcome, or the reader dying with it."""
    st: ApiState = app.extensions["inferq"]
    st.progress._gather_s = 0.5
    alice = Caller(app.test_client(), keys.alice)
    ids = queued_jobs(alice, 2)
    real = progress_service.get_jobs_progress

    def down(*_: Any) -> Any:
        raise OperationalError("SELECT", {}, Exception("the server closed the connection"))

    monkeypatch.setattr(progress_service, "get_jobs_progress", down)
    answers: dict[str, Any] = {}

    def poll(job_id: str) -> None:
        answers[job_id] = Caller(app.test_client(), keys.alice).get(f"/v1/jobs/{job_id}?wait=0.1")

    # When the read of a group of two long-polls fails
    together([lambda i=i: poll(i) for i in ids])

    # Then each is answered 503 with a problem, not a hang or a 500
    for job_id in ids:
        assert answers[job_id].status_code == 503, answers[job_id].get_json()
        assert answers[job_id].headers["Content-Type"] == "application/problem+json"

    # And once Postgres answers again, the next long-poll is read and answered
    monkeypatch.setattr(progress_service, "get_jobs_progress", real)
    again = alice.get(f"/v1/jobs/{ids[0]}?wait=0.1")
    assert again.status_code == 200 and again.get_json()["status"] == "queued"


def test_a_wait_that_runs_out_ends_early_enough_for_its_answer_to_arrive_within_it(
    alice: Caller, no_worker: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: a wait that runs its whole length before the grouped read (which gathers for
    up to 50 ms) and the answer start: a client whose timeout is its wait would give up."""
    from api.services.waiters import Signal

    asked: list[float] = []
    real_wait = Signal.wait

    def wait(self: Signal, timeout: float | None = None) -> bool:
        asked.append(-1.0 if timeout is None else timeout)
        return real_wait(self, timeout)

    monkeypatch.setattr(Signal, "wait", wait)
    [job] = queued_jobs(alice, 1)

    # When a long-poll of 1 s runs out (no worker: the job stays queued)
    answer = alice.get(f"/v1/jobs/{job}?wait=1")

    # Then the wait ended a tenth of the second early, and the answer is the open job
    assert answer.status_code == 200 and answer.get_json()["status"] == "queued"
    assert len(asked) == 1 and 0.85 <= asked[0] <= 0.9, asked
