"""parse_json: numbers out of range are refused, in every encoding json.loads accepts, and
everything finite parses as it is."""

from __future__ import annotations

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
