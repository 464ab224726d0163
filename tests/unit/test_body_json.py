"""parse_json: numbers out of range are refused, in every encoding json.loads accepts, and
everything finite parses as it is."""

from __future__ import annotations

import json
import math

import pytest

from api.http.body import parse_json
from inferq.core.errors import BadRequest

OVERFLOWING = [
    b'{"x": 1e400}',
    b'{"x": -1E+309}',
    b'{"x": 1e0400}',
    b'{"x": [0.5, 2.5e999]}',
    b'{"x": ' + b"9" * 400 + b".0}",
    b'{"x": 9.' + b"0" * 250 + b"e308}",
]


@pytest.mark.parametrize("raw", OVERFLOWING)
def test_a_number_out_of_range_is_refused(raw: bytes) -> None:
    with pytest.raises(BadRequest, match="out of range"):
        parse_json(raw)


@pytest.mark.parametrize("encoding", ["utf-16", "utf-16-le", "utf-32", "utf-32-be"])
def test_an_overflowing_number_in_a_wide_encoding_is_refused(encoding: str) -> None:
    """json.loads decodes UTF-16 and UTF-32 bodies: their numbers are checked too."""
    raw = '{"x": 1e400}'.encode(encoding)
    with pytest.raises(BadRequest, match="out of range"):
        parse_json(raw)


def test_large_finite_numbers_parse() -> None:
    raw = b'{"a": ' + b"9" * 199 + b"e99, " + b'"b": -' + b"9" * 199 + b".9e+99}"
    body = parse_json(raw)
    assert all(math.isfinite(v) for v in body.values())


def test_ordinary_floats_parse() -> None:
    raw = b'{"inputs": [0.25, -1.5e-12, 3E+20, 7], "s": "e123 is text"}'
    body = parse_json(raw)
    assert body == {"inputs": [0.25, -1.5e-12, 3e20, 7], "s": "e123 is text"}
    assert isinstance(body["inputs"][3], int)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_constants_are_refused(constant: bytes) -> None:
    for raw in (b'{"x": ' + constant + b"}", b'{"x": ' + constant + b', "y": 1e400}'):
        with pytest.raises(BadRequest, match="not valid JSON"):
            parse_json(raw)


SAME_AS_THE_STANDARD_LIBRARY = [
    b'{"model": "digits", "input": {"pixels": [0.0096171719647697, 12.003755871490188, 16.0]}}',
    b'{"a": [1, -0, -0.0, 1e5, 1E-7, 2.5e+3, true, false, null], "b": {"c": "\\u00e9\\n"}}',
    b'{"x": 0.12345678901234567890123456789}',  # a fraction's long digits: float() rounding
    b'{"x": 9223372036854775807, "y": -9223372036854775808, "z": 18446744073709551615}',
    b'{"big": 12345678901234567890123}',  # past 64 bits: an int, not a rounded float
    b'{"big": -123456789012345678901234567890.5, "s": "12345678901234567890123"}',
    '{"é": "日本", "k": [[[]]], "dup": 1, "dup": 2}'.encode(),
]


@pytest.mark.parametrize("raw", SAME_AS_THE_STANDARD_LIBRARY)
def test_a_body_parses_to_what_the_standard_library_makes_of_it(raw: bytes) -> None:
    """Catches: the fast parser rounding an integer past 64 bits into a float, or parsing any
    value to another value or type than json.loads does."""
    expected = json.loads(raw)
    parsed = parse_json(raw)
    assert parsed == expected
    assert repr(parsed) == repr(expected)  # types too: 1 is not 1.0, -0.0 keeps its sign


def test_an_ordinary_body_never_reaches_the_standard_librarys_parser(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Catches: every body parsed by json.loads, ten times orjson's CPU on a job's floats."""

    def refuse(*args: object, **kwargs: object) -> object:
        raise AssertionError("json.loads was called")

    monkeypatch.setattr("api.http.body.json.loads", refuse)
    assert parse_json(SAME_AS_THE_STANDARD_LIBRARY[0])["model"] == "digits"
