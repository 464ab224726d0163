"""An API process's database pool: a waiting long-poll holds none of it, and a request that
finds it taken for ``INFERQ_API_DB_WAIT_S`` gets a 503 problem instead of hanging."""

from __future__ import annotations

import threading
import time
import uuid

from flask.testing import FlaskClient

from api.app import create_app
from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.factories import holdout


def one_connection_app(settings: Settings) -> FlaskClient:
    lean = settings.replace(api_db_pool=1, db_overflow=0.0, api_db_wait_s=0.5)
    return create_app(lean).test_client()


def test_a_request_that_gets_no_connection_in_time_is_a_503(
    settings: Settings, digits_version: int, keys: Keys
) -> None:
    http = one_connection_app(settings)
    auth = {"Authorization": f"Bearer {keys.alice}"}
    engine = http.application.extensions["inferq"].sessions.kw["bind"]
    # Given the process's only connection taken
    with engine.connect():
        # When a request needs one
        response = http.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth)
    # Then it is told to come back, as a problem, after the pool's wait
    assert response.status_code == 503
    assert response.content_type == "application/problem+json"
    assert response.headers["Retry-After"] == "2"
    assert "too busy" in response.json["detail"]
    # And with the connection back, the same request is answered (an unknown job: 404)
    assert http.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth).status_code == 404


def test_a_waiting_long_poll_holds_no_connection(
    settings: Settings, digits_version: int, keys: Keys
) -> None:
    """Catches a long-poll that holds a connection while it waits (tried by hand: ``signal.wait``
    in ``wait_until_terminal`` moved inside ``with st.sessions()`` with a connection checked
    out): the other request then finds the only connection taken and gets a 503.

    The poll waits 60 s and is ended by a cancel, not by its timer, and the check runs only once
    the poll is registered as waiting: no step depends on how fast a loaded machine runs."""
    lean = settings.replace(api_db_pool=1, db_overflow=0.0, api_db_wait_s=5.0, max_wait_s=60.0)
    http = create_app(lean).test_client()
    waiter = http.application.extensions["inferq"].waiter
    auth = {"Authorization": f"Bearer {keys.alice}"}
    # Given a queued job (no worker runs here) and a client long-polling it for up to 60 s
    job = http.post("/v1/jobs", json={"model": "digits", "input": holdout(1)[0][0]}, headers=auth)
    assert job.status_code == 202
    job_id = job.json["id"]
    answers: list[tuple[int, str]] = []
    poller = http.application.test_client()

    def poll() -> None:
        answer = poller.get(f"/v1/jobs/{job_id}?wait=60", headers=auth)
        answers.append((answer.status_code, answer.json["status"]))

    polling = threading.Thread(target=poll)
    polling.start()
    try:
        deadline = time.monotonic() + 30.0
        while waiter.waiting(job_id) == 0 and polling.is_alive():
            assert time.monotonic() < deadline, "the long-poll never started waiting"
            time.sleep(0.01)
        assert polling.is_alive()
        # When another request needs the process's only connection while the poll waits
        other = http.get(f"/v1/jobs/{uuid.uuid4()}", headers=auth)
        # Then it gets it (an unknown job: 404, not 503 for want of a connection)
        assert other.status_code == 404
        assert waiter.waiting(job_id) == 1
    finally:
        # And the poll ends when the job does: a cancel wakes it with the job's new state
        canceled = http.post(f"/v1/jobs/{job_id}/cancel", headers=auth)
        polling.join(timeout=30.0)
    assert canceled.status_code == 200
    assert not polling.is_alive()
    assert answers == [(200, "canceled")]
