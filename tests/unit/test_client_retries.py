"""The Python client retries what is safe to retry, and nothing else."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from inferq.client import Client
from inferq.core.errors import Problem, ServiceUnavailable

JOB = {"id": "3f1b3c9e-7a51-4a53-9f3c-0d3c54a7a001", "status": "succeeded"}

Step = Callable[[BaseHTTPRequestHandler], None]


def answer(status: int, body: object, headers: dict[str, str] | None = None) -> Step:
    def step(handler: BaseHTTPRequestHandler) -> None:
        data = json.dumps(body).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        for name, value in (headers or {}).items():
            handler.send_header(name, value)
        handler.end_headers()
        handler.wfile.write(data)

    return step


def cut_off(handler: BaseHTTPRequestHandler) -> None:
    """Headers promising a body, then the connection dies: a node killed mid-response."""
    handler.send_response(200)
    handler.send_header("Content-Type", "application/json")
    handler.send_header("Content-Length", "827")
    handler.end_headers()
    handler.wfile.flush()
    handler.connection.shutdown(socket.SHUT_RDWR)
    handler.close_connection = True


class Script:
    """A server that answers the n-th request with the n-th step, recording each request."""

    def __init__(self, steps: list[Step]) -> None:
        self.steps = steps
        self.seen: list[tuple[str, str | None]] = []  # (method, Idempotency-Key)
        script = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                self.rfile.read(length)
                script.seen.append((self.command, self.headers.get("Idempotency-Key")))
                script.steps[min(len(script.seen), len(script.steps)) - 1](self)

            do_GET = do_POST = _serve

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"


@pytest.fixture
def serve() -> Iterator[Callable[[list[Step]], Script]]:
    scripts: list[Script] = []

    def start(steps: list[Step]) -> Script:
        scripts.append(Script(steps))
        return scripts[-1]

    yield start
    for script in scripts:
        script.server.shutdown()
        script.server.server_close()


def test_a_read_cut_off_mid_body_is_tried_again(serve: Callable[[list[Step]], Script]) -> None:
    script = serve([cut_off, answer(200, JOB)])
    assert Client(script.url, "k").get(JOB["id"]) == JOB
    assert [method for method, _ in script.seen] == ["GET", "GET"]


def test_a_read_waits_out_retry_after_on_503(serve: Callable[[list[Step]], Script]) -> None:
    busy = {"type": "about:blank", "title": "Service unavailable", "status": 503}
    script = serve([answer(503, busy, {"Retry-After": "0"}), answer(200, JOB)])
    assert Client(script.url, "k").get(JOB["id"]) == JOB
    assert len(script.seen) == 2


def test_reads_give_up_after_their_retries(serve: Callable[[list[Step]], Script]) -> None:
    busy = {"type": "about:blank", "title": "Service unavailable", "status": 503}
    script = serve([answer(503, busy, {"Retry-After": "0"})])
    with pytest.raises(ServiceUnavailable):
        Client(script.url, "k", retries=2).get(JOB["id"])
    assert len(script.seen) == 3


def test_a_submit_without_a_key_is_never_retried(serve: Callable[[list[Step]], Script]) -> None:
    script = serve([answer(502, {"status": 502}), answer(202, JOB)])
    with pytest.raises(Problem) as raised:
        Client(script.url, "k").submit("digits", {"pixels": []})
    assert raised.value.status == 502
    assert len(script.seen) == 1  # the node may have stored it: only the caller may decide


def test_a_submit_with_a_key_is_retried_with_the_same_key(
    serve: Callable[[list[Step]], Script],
) -> None:
    script = serve([cut_off, answer(202, JOB)])
    job = Client(script.url, "k").submit("digits", {"pixels": []}, idempotency_key="abc")
    assert job == JOB
    assert script.seen == [("POST", "abc"), ("POST", "abc")]


def test_a_client_problem_is_not_retried(serve: Callable[[list[Step]], Script]) -> None:
    script = serve([answer(404, {"type": "about:blank", "title": "Not found", "status": 404})])
    with pytest.raises(Problem) as raised:
        Client(script.url, "k").get(JOB["id"])
    assert raised.value.status == 404 and len(script.seen) == 1
