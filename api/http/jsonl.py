"""Reading a JSON Lines upload as it streams in: one JSON object per line, within limits.

Nothing is held whole: the body is read in blocks, and each line is parsed and handed on
before the next is read. A problem names the first line that breaks a rule (lines count
from 1): a line too long or too many lines or bytes (413), a line that is not a JSON object,
an empty line between others (422). Parsing is strict like the JSON body's (no NaN, no
Infinity, no number that overflows to one), and rejects what Postgres cannot store in JSONB
(NUL characters, unpaired surrogates), so a line accepted here is a line stored.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from typing import IO, Any

from db.fastjson import unstorable
from inferq.core.errors import InvalidInput, PayloadTooLarge

BLOCK_BYTES = 1 << 16
BOM = b"\xef\xbb\xbf"


@dataclasses.dataclass(frozen=True)
class Limits:
    """How much one upload may hold."""

    max_bytes: int
    max_lines: int
    max_line_bytes: int


@dataclasses.dataclass(frozen=True)
class Line:
    """One parsed line: its number in the file (from 1), its text, and its value."""

    number: int
    text: str
    value: dict[str, Any]


def bad_line(number: int, detail: str, pointer: str = "") -> InvalidInput:
    """A 422 naming line ``number``."""
    error = {"line": number, "pointer": pointer or "/", "detail": detail}
    return InvalidInput(f"line {number}: {detail}", errors=[error])


def read_lines(stream: IO[bytes], limits: Limits) -> Iterator[Line]:
    """Each line of ``stream`` parsed, in order; raises at the first line that breaks a rule.

    A trailing newline and blank lines at the very end are fine; a blank line followed by
    more data is not (it would shift every later index).
    """
    blank: int | None = None
    for number, raw in enumerate(_raw_lines(stream, limits), start=1):
        if not raw.strip():
            blank = number if blank is None else blank
            continue
        if blank is not None:
            raise bad_line(blank, "is empty; every line must hold one JSON object")
        if number > limits.max_lines:
            raise PayloadTooLarge(
                f"line {number}: a batch holds at most {limits.max_lines} lines.",
                errors=[{"line": number, "pointer": "/", "detail": "too many lines"}],
            )
        yield parse_line(number, raw)


def _raw_lines(stream: IO[bytes], limits: Limits) -> Iterator[bytes]:
    pending = b""
    total = 0
    number = 1
    first = True
    while True:
        block = stream.read(BLOCK_BYTES)
        if not block:
            break
        total += len(block)
        if total > limits.max_bytes:
            raise PayloadTooLarge(f"The upload is larger than {limits.max_bytes} bytes.")
        if first:
            block, first = block.removeprefix(BOM), False
        pieces = (pending + block).split(b"\n")
        pending = pieces.pop()
        for piece in pieces:
            _check_length(number, piece, limits)
            yield piece
            number += 1
        _check_length(number, pending, limits)
    if pending:
        yield pending


def _check_length(number: int, raw: bytes, limits: Limits) -> None:
    if len(raw) > limits.max_line_bytes:
        raise PayloadTooLarge(
            f"line {number} is longer than {limits.max_line_bytes} bytes.",
            errors=[{"line": number, "pointer": "/", "detail": "line too long"}],
        )


def parse_line(number: int, raw: bytes) -> Line:
    """One line as a JSON object, or a 422 naming it."""
    try:
        text = raw.decode("utf-8").rstrip("\r")
        value = json.loads(text, parse_constant=_reject_constant)
    except UnicodeDecodeError:
        raise bad_line(number, "is not UTF-8") from None
    except RecursionError:
        raise bad_line(number, "is nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise bad_line(number, f"is not valid JSON: {str(exc)[:200]}") from None
    if not isinstance(value, dict):
        raise bad_line(number, "must be a JSON object (one input per line)")
    problem = unstorable(value)
    if problem:
        raise bad_line(number, problem)
    return Line(number, text, value)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")
