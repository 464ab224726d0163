"""The API writes its JSONB columns with orjson (api.http.json_provider.column_json): a job's
input is stored as the value the client sent."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from sqlalchemy import select

import api.app
from api.state import ApiState
from db.tables import Job
from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.factories import holdout
from tests.integration.conftest import Caller


def test_a_submits_input_is_written_by_the_apis_json_serializer_and_stored_as_sent(
    settings: Settings, digits_version: int, keys: Keys, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: the API's engine left on the standard library's encoder (2.3 % of its CPU
    at submit), or a serializer that changes what is stored."""
    written: list[Any] = []
    real = api.app.column_json

    def counting(value: Any) -> str:
        written.append(value)
        return real(value)

    monkeypatch.setattr(api.app, "column_json", counting)
    app = api.app.create_app(settings)
    pixels = holdout(1)[0][0]

    # When a job is submitted
    response = Caller(app.test_client(), keys.alice).post(
        "/v1/jobs", {"model": "digits", "input": pixels}
    )

    # Then its input went through the API's serializer and is stored as sent
    assert response.status_code in (200, 202), response.get_json()
    assert pixels in written
    st: ApiState = app.extensions["inferq"]
    with st.sessions() as session:
        job_id = uuid.UUID(response.get_json()["id"])
        stored = session.scalar(select(Job.input).where(Job.id == job_id))
    assert stored == pixels
