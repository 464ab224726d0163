"""An API process's database pool: a waiting long-poll holds none of it, and a request that
finds it taken for ``INFERQ_API_DB_WAIT_S`` gets a 503 problem instead of hanging."""

from __future__ import annotations

import threading
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
    http = one_connection_app(settings)
    auth = {"Authorization": f"Bearer {keys.alice}"}
    # Given a queued job (no worker runs here) and a client long-polling it for 3 s
    job = http.post("/v1/jobs", json={"model": "digits", "input": holdout(1)[0][0]}, headers=auth)
    assert job.status_code == 202
    answers: list[int] = []
    poller = http.application.test_client()
    poll = threading.Thread(
        target=lambda: answers.append(
            poller.get(f"/v1/jobs/{job.json['id']}?wait=3", headers=auth).status_code
        )
    )
    poll.start()
    try:
        # When another request needs the process's only connection meanwhile
        models = http.get("/v1/models", headers=auth)
        # Then it gets it while the long-poll is still waiting
        assert models.status_code == 200
        assert poll.is_alive()
    finally:
        poll.join()
    assert answers == [200]
