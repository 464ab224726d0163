"""The API's JSON answers, written by orjson (api.http.json_provider): the same JSON Flask's
own provider gives, and no error where orjson refuses a value."""

from __future__ import annotations

import datetime as dt
import json
import uuid

from api.app import _Flask
from api.http.json_provider import OrjsonProvider


def answer(value: object) -> tuple[bytes, object]:
    app = _Flask("test")
    assert isinstance(app.json, OrjsonProvider)
    with app.app_context():
        body = app.json.response(value).get_data()
    return body, json.loads(body)


def test_answers_decode_to_what_flasks_own_provider_gives() -> None:
    value = {
        "id": uuid.UUID("01900000-0000-7000-8000-000000000001"),
        "when": dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.timezone.utc),
        "z": 1,
        "a": [1.5, None, True, "é"],
        3: "int key",
    }
    body, decoded = answer(value)
    from flask import Flask

    plain = Flask("plain")
    plain.json.sort_keys = False  # type: ignore[attr-defined]
    with plain.app_context():
        expected = json.loads(plain.json.response(value).get_data())
    assert decoded == expected
    assert list(decoded) == ["id", "when", "z", "a", "3"]  # keys in the order given
    assert body.endswith(b"\n") and b" " not in body.replace(b"int key", b"").replace(
        b"Sun, 06 Dec 2026 12:00:00 GMT", b""
    )


def test_what_orjson_refuses_is_written_by_the_standard_library() -> None:
    # An integer past 64 bits, as an input may carry and a job echoes
    _, decoded = answer({"input": {"n": 2**70}})
    assert decoded == {"input": {"n": 2**70}}


def test_a_json_column_is_written_as_the_standard_library_would_decode_it() -> None:
    """The API's JSONB values (api.http.json_provider.column_json): the same value once
    decoded, unicode and key order kept, an integer past 64 bits written all the same."""
    from api.http.json_provider import column_json

    value = {"pixels": [0.1, 16.0, 1e-7], "é": {"nested": [None, True, "ü"]}, "n": 2**70}
    assert json.loads(column_json(value)) == value
    assert list(json.loads(column_json(value))) == ["pixels", "é", "n"]
    assert json.loads(column_json([1, 2.5, "x"])) == [1, 2.5, "x"]
