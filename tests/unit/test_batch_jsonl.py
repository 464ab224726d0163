"""The JSON Lines reader behind POST /v1/batches: streamed, strict, limited, naming lines."""

from __future__ import annotations

import io

import pytest

from api.http.jsonl import Limits, read_lines
from inferq.core.errors import InvalidInput, PayloadTooLarge

ROOMY = Limits(max_bytes=1 << 20, max_lines=100, max_line_bytes=1000)


class Trickle(io.RawIOBase):
    """A body that arrives a few bytes at a time, splitting lines across reads."""

    def __init__(self, data: bytes, step: int = 7) -> None:
        self.data, self.step, self.reads = data, step, 0

    def read(self, size: int = -1) -> bytes:
        self.reads += 1
        block, self.data = self.data[: self.step], self.data[self.step :]
        return block


def values(data: bytes, limits: Limits = ROOMY) -> list[object]:
    return [line.value for line in read_lines(Trickle(data), limits)]


def problem(data: bytes, limits: Limits = ROOMY) -> InvalidInput | PayloadTooLarge:
    with pytest.raises((InvalidInput, PayloadTooLarge)) as caught:
        values(data, limits)
    assert isinstance(caught.value, (InvalidInput, PayloadTooLarge))
    return caught.value


def test_lines_split_across_reads_come_out_whole_and_in_order() -> None:
    data = b"".join(b'{"n": %d, "pad": "%s"}\n' % (i, b"x" * i) for i in range(30))
    stream = Trickle(data)

    lines = list(read_lines(stream, ROOMY))

    assert [line.value for line in lines] == [{"n": i, "pad": "x" * i} for i in range(30)]
    assert [line.number for line in lines] == list(range(1, 31))
    assert stream.reads > 30  # it really was read a little at a time


def test_a_bom_crlf_endings_and_trailing_blank_lines_are_fine() -> None:
    assert values(b'\xef\xbb\xbf{"a": 1}\r\n{"a": 2}\r\n\r\n\n') == [{"a": 1}, {"a": 2}]
    assert values(b'{"a": 1}') == [{"a": 1}]  # no final newline
    assert values(b"") == []


@pytest.mark.parametrize(
    ("data", "kind", "detail"),
    [
        (b'{"a": 1}\n\n{"a": 2}\n', InvalidInput, "line 2: is empty"),
        (b'{"a": 1}\n{"a": \n', InvalidInput, "line 2: is not valid JSON"),
        (b'{"a": 1}\n[1]\n', InvalidInput, "line 2: must be a JSON object"),
        (b'{"a": NaN}\n', InvalidInput, "line 1: is not valid JSON: NaN"),
        (b'{"a": -Infinity}\n', InvalidInput, "line 1: is not valid JSON"),
        (b'{"a": 1e400}\n', InvalidInput, "line 1: holds a number out of range"),
        (b'{"a": "\\u0000"}\n', InvalidInput, "line 1: holds a NUL character"),
        (b'{"\\ud800": 1}\n', InvalidInput, "line 1: holds an unpaired surrogate"),
        (b'{"a": "\xff"}\n', InvalidInput, "line 1: is not UTF-8"),
        (b'{"a": ' + b"[" * 30_000 + b"]" * 30_000 + b"}\n", InvalidInput, "line 1: is nested"),
    ],
    ids=[
        *("blank", "malformed", "array", "nan", "infinity", "overflow", "nul", "surrogate"),
        *("not-utf8", "too-deep"),
    ],
)
def test_the_first_bad_line_is_named(data: bytes, kind: type, detail: str) -> None:
    roomy = Limits(max_bytes=1 << 20, max_lines=100, max_line_bytes=1 << 16)
    found = problem(data, roomy)
    assert isinstance(found, kind) and detail in found.detail, found.detail
    assert found.errors and found.errors[0]["line"] == int(detail.split()[1].rstrip(":"))


def test_what_parses_but_is_too_deep_to_walk_is_a_problem_not_a_crash() -> None:
    from db.fastjson import unstorable

    value: object = 1.0
    for _ in range(5000):
        value = [value]
    assert unstorable({"a": value}) == "is nested too deeply"
    assert unstorable({"a": [[[1.0]]]}) is None


def test_limits_on_lines_bytes_and_line_length_are_413s() -> None:
    line = b'{"a": 1}\n'
    too_many = problem(line * 4, Limits(max_bytes=1000, max_lines=3, max_line_bytes=100))
    too_big = problem(line * 200, Limits(max_bytes=1000, max_lines=1000, max_line_bytes=100))
    # a long line is refused as it grows, without waiting for its end
    endless = problem(line + b'{"a": "' + b"x" * 500, Limits(10_000, 10, 100))

    assert isinstance(too_many, PayloadTooLarge) and "line 4" in too_many.detail
    assert isinstance(too_big, PayloadTooLarge) and "1000 bytes" in too_big.detail
    assert isinstance(endless, PayloadTooLarge) and "line 2 is longer than 100" in endless.detail
    assert (
        values(line * 3, Limits(max_bytes=1000, max_lines=3, max_line_bytes=100)) == [{"a": 1}] * 3
    )
