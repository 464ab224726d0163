"""parse_json: strict JSON whether or not a body takes the per-float check.

The check that every float is finite runs only on bodies that could hold an overflowing
number; these tests hold both kinds of body, and every encoding json.loads accepts, to it.
"""

from __future__ import annotations

import math

import pytest

from api.http.body import _MAY_OVERFLOW, parse_json
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
    """json.loads decodes UTF-16 and UTF-32 bodies, whose digits the quick pattern cannot
    see between their NUL bytes: those bodies take the check too."""
    raw = '{"x": 1e400}'.encode(encoding)
    assert _MAY_OVERFLOW.search(raw)
    with pytest.raises(BadRequest, match="out of range"):
        parse_json(raw)


def test_the_largest_finite_numbers_without_the_pattern_stay_finite() -> None:
    """What skips the check can never overflow: two exponent digits and fewer than 200
    digits in a row stay below 10**299."""
    raw = b'{"a": ' + b"9" * 199 + b"e99, " + b'"b": -' + b"9" * 199 + b".9e+99}"
    assert not _MAY_OVERFLOW.search(raw)
    body = parse_json(raw)
    assert all(math.isfinite(v) for v in body.values())


def test_ordinary_floats_parse_without_the_check() -> None:
    raw = b'{"inputs": [0.25, -1.5e-12, 3E+20, 7], "s": "e123 is text"}'
    body = parse_json(raw)
    assert body == {"inputs": [0.25, -1.5e-12, 3e20, 7], "s": "e123 is text"}
    assert isinstance(body["inputs"][3], int)


@pytest.mark.parametrize("constant", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_constants_are_refused_on_either_path(constant: bytes) -> None:
    for raw in (b'{"x": ' + constant + b"}", b'{"x": ' + constant + b', "y": 1e400}'):
        with pytest.raises(BadRequest, match="not valid JSON"):
            parse_json(raw)
