"""The nginx template's promises, checked on real nginx in front of small stand-in nodes.

The whole stack behind nginx is in test_nginx_stack.py; here the nodes are tiny HTTP servers
that can misbehave on cue (break the connection mid-request, or not listen at all), which is
what the retry rules are about.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import requests

from inferq.core.settings import Settings
from tests.e2e.nginx_stack import Nginx, at_once
from tests.processes import free_port

pytestmark = pytest.mark.e2e


class Node(BaseHTTPRequestHandler):
    """Answers with what it received; a node whose server has ``broken`` drops every request."""

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        self.server.seen.append(self.command)  # type: ignore[attr-defined]
        if self.server.broken:  # type: ignore[attr-defined]
            self.close_connection = True  # the request is read, and then the node "dies"
            return
        body = json.dumps(
            {"node": self.server.server_port, "request_id": self.headers.get("X-Request-ID")}
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def start_node(broken: bool = False) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Node)
    server.daemon_threads = True
    server.broken = broken  # type: ignore[attr-defined]
    server.seen = []  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def nodes() -> Iterator[list[ThreadingHTTPServer]]:
    started: list[ThreadingHTTPServer] = []
    yield started
    for server in started:
        server.shutdown()
        server.server_close()


@pytest.fixture
def run_nginx(tmp_path: Path) -> Iterator:
    running: list[Nginx] = []

    def run(ports: list[int], **overrides: object) -> Nginx:
        settings = Settings.of(port=free_port(), **overrides)  # type: ignore[arg-type]
        running.append(Nginx(settings, tmp_path / f"home{len(running)}", ports))
        return running[-1]

    yield run
    for proxy in running:
        proxy.stop()


def test_requests_spread_over_the_nodes_and_carry_a_request_id(nodes, run_nginx) -> None:
    # Given nginx in front of two healthy nodes
    nodes += [start_node(), start_node()]
    proxy = run_nginx([n.server_port for n in nodes])

    # When clients call without an id, with a good one, and with one unfit for logs
    answers = [requests.get(proxy.url + "/v1/models", timeout=5) for _ in range(20)]
    given = requests.get(proxy.url + "/x", headers={"X-Request-ID": "client-42.a:b"}, timeout=5)
    unfit = requests.get(proxy.url + "/x", headers={"X-Request-ID": "a b"}, timeout=5)

    # Then both nodes served, each request reached a node with an id, kept when it was sane
    assert all(a.status_code == 200 for a in answers)
    assert {a.json()["node"] for a in answers} == {n.server_port for n in nodes}
    generated = {a.json()["request_id"] for a in answers}
    assert len(generated) == 20 and all(len(i) == 32 for i in generated)
    assert given.json()["request_id"] == "client-42.a:b"
    assert unfit.json()["request_id"] not in ("a b", None)
    # and nginx logged each request as JSON with its id and the node it went to
    logged = {r["request_id"]: r for r in proxy.access_log()}
    assert logged["client-42.a:b"]["upstream_addr"] == f"127.0.0.1:{given.json()['node']}"


def test_a_read_a_node_dropped_is_sent_on_to_the_next_node(nodes, run_nginx) -> None:
    # Given one node that drops every request it reads, and one healthy node
    nodes += [start_node(broken=True), start_node()]
    broken, healthy = nodes
    proxy = run_nginx([broken.server_port, healthy.server_port])

    # When a client reads through nginx
    reads = [requests.get(proxy.url + "/v1/jobs/1", timeout=5) for _ in range(10)]

    # Then every read succeeded: what the broken node dropped, the other node answered
    assert [r.status_code for r in reads] == [200] * 10
    assert broken.seen == ["GET"]  # then nginx left it alone (max_fails=1, fail_timeout=10s)
    assert healthy.seen == ["GET"] * 10


def test_a_submission_a_node_received_is_never_sent_again(nodes, run_nginx) -> None:
    # Given one node that drops every request it reads, and one healthy node
    nodes += [start_node(broken=True), start_node()]
    broken, healthy = nodes
    proxy = run_nginx([broken.server_port, healthy.server_port])

    # When a client submits through nginx
    posts = [requests.post(proxy.url + "/v1/jobs", json={}, timeout=5) for _ in range(10)]

    # Then the submission the broken node had read was not sent to the other node (the broken
    # one may have acted on it): it failed, clearly, as a problem with Retry-After
    failed = [p for p in posts if p.status_code != 200]
    assert broken.seen == ["POST"] and len(failed) == 1
    assert failed[0].status_code == 502
    assert failed[0].headers["Content-Type"] == "application/problem+json"
    assert failed[0].json()["status"] == 502 and failed[0].headers["Retry-After"] == "1"
    assert healthy.seen == ["POST"] * 9


def test_a_submission_to_a_node_that_is_down_goes_to_the_next_node(nodes, run_nginx) -> None:
    # Given nginx in front of a port where nothing listens, and a healthy node
    nodes.append(start_node())
    proxy = run_nginx([free_port(), nodes[0].server_port])

    # When clients submit, then none fails: a request never sent is safe to send elsewhere
    posts = [requests.post(proxy.url + "/v1/jobs", json={}, timeout=5) for _ in range(10)]
    assert [p.status_code for p in posts] == [200] * 10


def test_over_the_rate_a_client_gets_429_with_retry_after(nodes, run_nginx) -> None:
    # Given nginx allowing 1 request per second and a burst of 2 per client address
    nodes.append(start_node())
    proxy = run_nginx([nodes[0].server_port], rate_limit_rps=1, rate_limit_burst=2)

    # When a client sends 8 requests at once
    answers = at_once(proxy.url + "/v1/models", {}, 8)

    # Then the allowance passes and the rest are told to come back later
    codes = [a.status_code for a in answers]
    assert sorted(codes) == [200] * 3 + [429] * 5, codes
    limited = next(a for a in answers if a.status_code == 429)
    assert limited.headers["Retry-After"] == "1"
    assert limited.headers["Content-Type"] == "application/problem+json"
    assert limited.json()["type"].endswith("/rate-limited")
    assert len(nodes[0].seen) == 3  # a limited request never reached a node
    # nginx's own liveness answers whatever the rate
    assert requests.get(proxy.url + "/nginx-healthz", timeout=5).status_code == 200


def test_a_body_over_the_api_limit_is_refused_by_nginx_with_413(nodes, run_nginx) -> None:
    nodes.append(start_node())
    proxy = run_nginx([nodes[0].server_port], max_body_bytes=1000)

    small = requests.post(proxy.url + "/v1/jobs", data=b"x" * 1000, timeout=5)
    large = requests.post(proxy.url + "/v1/jobs", data=b"x" * 1001, timeout=5)

    assert small.status_code == 200
    assert large.status_code == 413
    assert large.headers["Content-Type"] == "application/problem+json"
    assert large.json()["type"].endswith("/payload-too-large")
    assert nodes[0].seen == ["POST"]


def test_while_no_node_is_up_nginx_answers_503_with_retry_after(nodes, run_nginx) -> None:
    # Given nginx in front of ports where nothing listens yet (the stack is starting)
    proxy = run_nginx([free_port(), free_port()])

    # When a client reads, or submits
    answers = [
        requests.get(proxy.url + "/readyz", timeout=5),
        requests.post(proxy.url + "/v1/jobs", json={}, timeout=5),
        requests.get(proxy.url + "/readyz", timeout=5),  # both nodes now marked down
    ]

    # Then it is told, as a problem, that the service is not up and when to come back: a 503,
    # since no node received anything, never the 502 of a request a node may have acted on
    for answer in answers:
        assert answer.status_code == 503, answer.text
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert answer.headers["Retry-After"] == "1"
        assert answer.json()["type"].endswith("/service-unavailable")


def test_metrics_are_not_served_through_nginx(nodes, run_nginx) -> None:
    # Given nginx in front of a node that would answer anything
    nodes.append(start_node())
    proxy = run_nginx([nodes[0].server_port])

    # When an anonymous client asks for /metrics through the front door
    answer = requests.get(proxy.url + "/metrics", timeout=5)

    # Then nginx refuses it and the node never sees the request
    assert answer.status_code == 404
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert nodes[0].seen == []


class Receiver(BaseHTTPRequestHandler):
    """Notes each request as soon as its head arrives, before reading its body."""

    def do_POST(self) -> None:
        self.server.heads.set()  # type: ignore[attr-defined]
        length = int(self.headers.get("Content-Length") or 0)
        received = len(self.rfile.read(length))
        body = json.dumps({"received": received}).encode()
        self.send_response(201)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_an_artifact_upload_streams_through_nginx_to_the_node(nodes, run_nginx) -> None:
    """Given nginx in front of a node, when a client has sent the head of an artifact upload
    and a quarter of its 1 MiB body, then the node already has the request; once the client
    sends the rest, the node answers for the whole body.

    Catches: proxy_request_buffering on in the upload location (nginx would spool the whole
    artifact to its own disk, a second copy of gigabytes, before the node saw a byte)."""
    import socket

    server = ThreadingHTTPServer(("127.0.0.1", free_port()), Receiver)
    server.daemon_threads = True
    server.heads = threading.Event()  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    nodes.append(server)
    proxy = run_nginx([server.server_port], max_artifact_bytes=4 * 2**20)
    size = 2**20
    host, port = proxy.url.removeprefix("http://").split(":")
    head = (
        f"POST /v1/models/m/versions HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n"
        "Content-Type: application/octet-stream\r\nConnection: close\r\n\r\n"
    ).encode()
    with socket.create_connection((host, int(port)), timeout=30) as conn:
        conn.sendall(head + b"\0" * (size // 4))

        assert server.heads.wait(20), "nginx held the upload back from the node"  # type: ignore[attr-defined]

        conn.sendall(b"\0" * (size - size // 4))
        answer = b""
        while chunk := conn.recv(65536):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 201")
    assert json.loads(answer.partition(b"\r\n\r\n")[2]) == {"received": size}
