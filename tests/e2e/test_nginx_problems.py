"""Every error nginx answers itself is problem+json, not nginx's HTML page (issue 16)."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferq.core.settings import Settings
from tests.e2e.nginx_stack import Nginx
from tests.e2e.test_nginx_proxy import start_node
from tests.processes import free_port

pytestmark = pytest.mark.e2e


@pytest.fixture
def proxy(tmp_path: Path) -> Iterator[Nginx]:
    node = start_node()
    running = Nginx(
        Settings.of(port=free_port(), max_body_bytes=1024), tmp_path, [node.server_port]
    )
    yield running
    running.stop()
    node.shutdown()
    node.server_close()


def raw(url: str, request: bytes) -> tuple[int, dict[str, str], bytes]:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=10) as conn:
        conn.sendall(request)
        data = b""
        while chunk := conn.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:] if ": " in line)
    return int(lines[0].split()[1]), {k.lower(): v for k, v in headers.items()}, body


def get(path: str, extra: str = "") -> bytes:
    return f"GET {path} HTTP/1.1\r\nHost: x\r\n{extra}Connection: close\r\n\r\n".encode("latin-1")


CASES = [
    ("a NUL in the path", get("/v1/jobs/%00"), 400),
    ("a header line too large", get("/v1/models", "X-Big: " + "a" * 6000 + "\r\n"), 431),
    (
        "headers too large in all",
        get("/v1/models", "".join(f"X-H{i}: {'b' * 3000}\r\n" for i in range(8))),
        431,
    ),
    ("a URI too long", get("/v1/models?" + "q" * 5000), 414),
    ("a control character in a header", get("/v1/models", "X-Bad: a\x00b\r\n"), 400),
    (
        "a body too large",
        b"POST /v1/jobs HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5000\r\nConnection: close\r\n\r\n"
        + b"{" * 5000,
        413,
    ),
    ("a malformed request line", b"GARBAGE\r\n\r\n", 400),
]


@pytest.mark.parametrize(("case", "request_bytes", "status"), CASES, ids=[c[0] for c in CASES])
def test_nginx_answers_its_own_errors_as_problems(
    proxy: Nginx, case: str, request_bytes: bytes, status: int
) -> None:
    code, headers, body = raw(proxy.url, request_bytes)
    assert code == status, (case, body[:300])
    assert headers["content-type"] == "application/problem+json", (case, body[:300])
    problem = json.loads(body)
    assert problem["status"] == status and problem["title"]


@pytest.fixture(scope="module")
def api_node(settings: Settings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    from tests.processes import ServiceProcess, wait_for_http

    port = free_port()
    node = ServiceProcess(
        "api", ["api", "--port", str(port)], settings, tmp_path_factory.mktemp("api")
    )
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", node)
        yield f"http://127.0.0.1:{port}"
    finally:
        node.stop()


GUNICORN_CASES = [
    ("too many headers", get("/healthz", "".join(f"X-H{i}: v\r\n" for i in range(150))), 431),
    ("a request line too long", get("/healthz?" + "q" * 9000), 414),
    ("a control character in a header", get("/healthz", "X-Bad: a\x01b\r\n"), 400),
    ("a malformed request line", b"GARBAGE\r\n\r\n", 400),
]


@pytest.mark.parametrize(
    ("case", "request_bytes", "status"), GUNICORN_CASES, ids=[c[0] for c in GUNICORN_CASES]
)
def test_an_api_node_answers_what_gunicorn_refuses_as_problems(
    api_node: str, case: str, request_bytes: bytes, status: int
) -> None:
    code, headers, body = raw(api_node, request_bytes)
    assert code == status, (case, body[:300])
    assert headers["content-type"] == "application/problem+json", (case, body[:300])
    problem = json.loads(body)
    assert problem["status"] == status and problem["title"]
