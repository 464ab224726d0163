"""Flask's JSON responses written by orjson.

Serialising a job for its answer was the largest single piece of Python an API process ran
per request after the insert (the standard library's encoder, in ``jsonify``); orjson does it
in a fraction of the time. Output keeps Flask's shape: compact, keys in the order given,
non-ASCII characters as UTF-8 rather than escapes (the same text once decoded),
datetimes and anything else orjson does not know rendered by Flask's own default (HTTP
dates, ``str`` of a UUID...). What orjson refuses (an integer past 64 bits, echoed from an
input) falls back to the standard library, so no answer turns into an error.
"""

from __future__ import annotations

import json
from typing import Any

import orjson
from flask.json.provider import DefaultJSONProvider

_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_PASSTHROUGH_DATETIME


class OrjsonProvider(DefaultJSONProvider):
    """Flask's default JSON provider, with orjson writing what it can."""

    sort_keys = False

    def dumps(self, obj: Any, **kwargs: Any) -> str:
        """``obj`` as compact JSON text; asked for anything else (an indent, sorted keys: a
        debug app, a caller's own arguments), or given what orjson refuses, the standard
        library writes it."""
        if not self.sort_keys and kwargs.keys() <= {"separators"}:
            try:
                return orjson.dumps(obj, default=self.default, option=_OPTIONS).decode()
            except TypeError:
                pass
        return super().dumps(obj, **kwargs)


def column_json(value: Any) -> str:
    """A JSONB column's value as text, for the API's engine (SQLAlchemy's ``json_serializer``):
    the standard library's encoder, on the job's input at every submit, was 2.3 % of an API
    process's CPU. For the API only: orjson writes NaN as null where the standard library
    writes a NaN that Postgres refuses, and every JSON value the API writes comes from a body
    parsed strictly (no NaN, no Infinity) or is built by the server. What orjson refuses (an
    integer past 64 bits) the standard library writes."""
    try:
        return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS).decode()
    except TypeError:
        return json.dumps(value)
