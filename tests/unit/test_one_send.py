"""The API's gunicorn answers with one ``send``: the head of a response goes with its body
(api.server.OneSendResponse), where gunicorn sent them apart. What it cannot send whole
(a streamed body, an answer without one) goes gunicorn's way, byte for byte the same."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest
from gunicorn.config import Config
from gunicorn.http import wsgi as gunicorn_wsgi

from api.server import OneSendResponse


class Recorder:
    """A socket that keeps each ``sendall``."""

    def __init__(self) -> None:
        self.sends: list[bytes] = []

    def sendall(self, data: bytes) -> None:
        self.sends.append(bytes(data))


def answer(
    kind: type[gunicorn_wsgi.Response],
    status: str,
    headers: list[tuple[str, str]],
    body: list[bytes],
    method: str = "GET",
) -> list[bytes]:
    """What ``kind`` sends for one answer, as gunicorn's worker drives it."""
    sock = Recorder()
    req = SimpleNamespace(
        version=(1, 1), method=method, headers=[], should_close=lambda: False, path="/x"
    )
    response = kind(req, sock, Config())
    response.start_response(status, headers)
    for piece in body:
        response.write(piece)
    response.close()
    return sock.sends


def same_bytes(a: list[bytes], b: list[bytes]) -> bool:
    # The Date header may tick between the two answers.
    strip = [line for line in b"".join(a).split(b"\r\n") if not line.startswith(b"Date:")]
    other = [line for line in b"".join(b).split(b"\r\n") if not line.startswith(b"Date:")]
    return strip == other


def test_a_json_answer_is_one_send_with_gunicorns_bytes() -> None:
    body = b'{"status":"ok"}'
    headers = [("Content-Type", "application/json"), ("Content-Length", str(len(body)))]
    ours = answer(OneSendResponse, "200 OK", headers, [body])
    theirs = answer(gunicorn_wsgi.Response, "200 OK", headers, [body])
    assert len(ours) == 1
    assert len(theirs) == 2
    assert ours[0].startswith(b"HTTP/1.1 200 OK\r\n") and ours[0].endswith(b"\r\n\r\n" + body)
    assert same_bytes(ours, theirs)


@pytest.mark.parametrize(
    ("status", "headers", "body", "method"),
    [
        ("200 OK", [("Content-Type", "application/x-ndjson")], [b"a\n", b"b\n"], "GET"),
        ("200 OK", [("Content-Length", "4")], [b"ab", b"cd"], "GET"),
        ("204 No Content", [], [], "DELETE"),
        ("200 OK", [("Content-Length", "2")], [b"ab"], "HEAD"),
    ],
    ids=["chunked stream", "body in pieces", "no body", "HEAD"],
)
def test_what_is_not_one_piece_goes_gunicorns_way(
    status: str, headers: list[tuple[str, str]], body: list[bytes], method: str
) -> None:
    ours = answer(OneSendResponse, status, headers, body, method)
    theirs = answer(gunicorn_wsgi.Response, status, headers, body, method)
    assert len(ours) == len(theirs)
    assert same_bytes(ours, theirs)


def test_the_api_server_makes_its_responses_so(monkeypatch: Any) -> None:
    from api.server import ApiServer
    from inferq.core.settings import Settings

    monkeypatch.setattr(gunicorn_wsgi, "Response", gunicorn_wsgi.Response)  # restored after
    ApiServer(Settings(), "127.0.0.1:0")
    assert gunicorn_wsgi.Response is OneSendResponse
