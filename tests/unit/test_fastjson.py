"""db.fastjson.loads: json.loads's value or error for every text, orjson's speed for most."""

from __future__ import annotations

import json
from typing import Any

import pytest

from db import fastjson

SAME_VALUE = [
    '{"pixels": [0.0096171719647697, 12.003755871490188, 16.0]}',
    '{"a": [1, -0, -0.0, 1e5, 1E-7, 2.5e+3, true, false, null], "b": {"c": "\\u00e9\\n"}}',
    '{"x": 0.12345678901234567890123456789}',
    '{"x": 9223372036854775807, "y": -9223372036854775808, "z": 18446744073709551615}',
    '{"big": 12345678901234567890123}',  # past 64 bits: an int, not a rounded float
    '{"big": -123456789012345678901234567890.5, "s": "12345678901234567890123"}',
    "1" + "0" * 300,  # how jsonb writes 1e300 back: an integer's digits
    '{"é": "日本", "k": [[[]]], "dup": 1, "dup": 2}',
    '"\\ud800"',  # an escaped lone surrogate: json.loads keeps it, orjson refuses it
    "[1e400, NaN, -Infinity]",  # orjson refuses them; json.loads makes floats
    "  [ ]  ",
]


@pytest.mark.parametrize("text", SAME_VALUE)
@pytest.mark.parametrize("as_bytes", [False, True])
def test_a_text_parses_to_what_json_loads_makes_of_it(text: str, as_bytes: bool) -> None:
    """Catches: an integer past 64 bits rounded into a float, or any value of another value
    or type than json.loads gives (what a worker's model receives as its input)."""
    expected = json.loads(text)
    parsed = fastjson.loads(text.encode() if as_bytes else text)
    assert repr(parsed) == repr(expected)  # types too: 1 is not 1.0, -0.0 keeps its sign


@pytest.mark.parametrize("text", ["", "{", '{"a": }', "[1,]", "tru", '"\x00'])
def test_what_json_loads_refuses_fails_as_json_loads_fails(text: str) -> None:
    with pytest.raises(json.JSONDecodeError) as expected:
        json.loads(text)
    with pytest.raises(json.JSONDecodeError) as raised:
        fastjson.loads(text)
    assert str(raised.value) == str(expected.value)


def test_an_ordinary_text_never_reaches_json_loads(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: every text parsed by json.loads, ten times orjson's CPU on a job's floats."""

    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError("json.loads was called")

    monkeypatch.setattr("db.fastjson.json.loads", refuse)
    assert fastjson.loads(SAME_VALUE[0])["pixels"][2] == 16.0


@pytest.mark.parametrize("value", [None, 3, memoryview(b"[1]")])
def test_what_is_not_text_fails_as_json_loads_fails(value: Any) -> None:
    with pytest.raises(TypeError):
        json.loads(value)
    with pytest.raises(TypeError):
        fastjson.loads(value)


def test_a_bytearray_parses_as_its_bytes() -> None:
    assert fastjson.loads(bytearray(b'{"a": [1, 2.5]}')) == {"a": [1, 2.5]}
