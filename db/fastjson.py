"""JSON text parsed by orjson wherever it gives exactly what the standard library gives, and
what of parsed JSON Postgres cannot store.

orjson parses a digits job's input (64 floats) in a tenth of ``json.loads``'s time. Where the
two differ, the standard library parses: what orjson refuses (its errors differ, and so does
what it accepts: NaN, 1e400), and a text holding an integer of 19 digits or more, which
orjson would turn into a float past 64 bits. Used for JSON columns as they are read
(:func:`db.engine.make_engine`) and for request bodies (``api.http.body``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import orjson

#: Each digit as 0, a point as itself, anything else as a space: 19 digits or more that are
#: not a fraction's (after a point) become a space and 19 zeros, found at C speed (a regex
#: for them tries every digit of a text of floats: ten times orjson's time).
_NUMBER_SHAPES = bytes(
    ord("0") if c in b"0123456789" else c if c == ord(".") else ord(" ") for c in range(256)
)
_LONG_RUN = b"0" * 19


def long_integer(raw: bytes) -> bool:
    """Whether ``raw`` holds 19 digits or more in a row that are not a fraction's. As a
    number's integer part orjson would turn them into a float (past 64 bits): such texts take
    the standard library's parser. A fraction's digits orjson rounds as float() does."""
    shapes = raw.translate(_NUMBER_SHAPES)
    return b" " + _LONG_RUN in shapes or shapes.startswith(_LONG_RUN)


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``: the same value, or the same error, at orjson's speed where it
    can give it."""
    if isinstance(text, str):
        raw = text.encode("utf-8", "surrogatepass")
    elif isinstance(text, bytes | bytearray):
        raw = bytes(text)
    else:
        return json.loads(text)  # what json.loads makes of anything else (a TypeError)
    if not long_integer(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            pass
    return json.loads(text)


def unstorable(value: Any) -> str | None:
    """Why Postgres could not store ``value`` (parsed JSON) as JSONB or text, or None."""
    try:
        return _unstorable(value)
    except RecursionError:
        return "is nested too deeply"


def _unstorable(value: Any) -> str | None:
    if isinstance(value, float):
        return None if math.isfinite(value) else "holds a number out of range"
    if isinstance(value, str):
        return _bad_string(value)
    if isinstance(value, list):
        return next(filter(None, map(_unstorable, value)), None)
    if isinstance(value, dict):
        for key, item in value.items():
            problem = _bad_string(key) or _unstorable(item)
            if problem:
                return problem
    return None


def _bad_string(value: str) -> str | None:
    if "\x00" in value:
        return "holds a NUL character (\\u0000), which cannot be stored"
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "holds an unpaired surrogate (\\ud800-\\udfff), which cannot be stored"
    return None
