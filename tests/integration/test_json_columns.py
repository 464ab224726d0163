"""JSONB columns: the API writes them with orjson (api.http.json_provider.column_json), a
job's input is stored as the value the client sent, and every engine reads them with
db.fastjson."""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest
from sqlalchemy import select
from sqlalchemy import text as sa_text

import api.app
from api.state import ApiState
from db import fastjson
from db.engine import KeptConnection, make_engine, make_session_factory
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
    assert any(_holds(value, pixels) for value in written)
    st: ApiState = app.extensions["inferq"]
    with st.sessions() as session:
        job_id = uuid.UUID(response.get_json()["id"])
        stored = session.scalar(select(Job.input).where(Job.id == job_id))
    assert stored == pixels


def test_json_columns_are_read_by_fastjson_as_json_loads_reads_them(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: an engine reading JSON columns with the standard library's parser (a worker's
    claim reads every job's input: 3 % of its CPU at eight clients), or a reader that changes
    a value (an integer past 64 bits rounded into a float)."""
    read: list[str | bytes] = []
    real = fastjson.loads

    def counting(text: str | bytes) -> Any:
        read.append(text)
        return real(text)

    monkeypatch.setattr(fastjson, "loads", counting)
    engine = make_engine(database_url, pool_size=1)
    kept = KeptConnection(engine)
    text = '{"big": 12345678901234567890123, "pixels": [0.0096171719647697, 16.0, -0.5]}'
    try:
        # When a JSONB value is read on a kept connection (the worker's claim) and in a session
        [(on_kept,)] = kept.execute("SELECT CAST(%(v)s AS jsonb)", {"v": text})
        with make_session_factory(engine)() as session:
            in_session = session.scalar(sa_text("SELECT CAST(:v AS jsonb)"), {"v": text})
    finally:
        kept.close()
        engine.dispose()

    # Then both went through fastjson, and both are what json.loads makes of the text
    assert len(read) == 2
    assert repr(on_kept) == repr(in_session) == repr(json.loads(text))


def _holds(written: Any, pixels: Any) -> bool:
    """Whether the serializer wrote ``pixels``: as a column's value, or as the input of one of
    the rows of a group's INSERT (db.jobs.insert_queued_jobs)."""
    if written == pixels:
        return True
    return isinstance(written, list) and any(
        isinstance(row, dict) and row.get("input") == pixels for row in written
    )
