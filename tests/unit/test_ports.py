"""``inferq up``'s ports: the ports a stack promises its programs are distinct and never
its public port, and a public port some other program took is a clear error, not a stack
that calls itself up while its clients talk to that program."""

from __future__ import annotations

import http.server
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from inferq.core.scrape import free_port, free_ports
from inferq.core.settings import Settings
from inferq.local import scrape_targets
from inferq.local.stack import StackError, StackPaths, programs, wait_ready

LAUNCHER = ("/usr/bin/python3", "-m", "inferq")


def test_ports_picked_together_are_distinct_and_avoid_those_promised() -> None:
    """Catches: each port let go before the next is picked (the OS may pick it again), or a
    port promised to another program (the stack's public port) handed out again."""
    promised = free_port()
    ports = free_ports(300, avoid=[promised])
    assert len(ports) == 300 and len(set(ports)) == 300
    assert promised not in ports


def test_metrics_ports_avoid_the_stacks_public_and_api_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[int, set[int]]] = []

    def picked(count: int, host: str = "127.0.0.1", avoid: Any = ()) -> list[int]:
        asked.append((count, set(avoid)))
        return list(range(50_000, 50_000 + count))

    monkeypatch.setattr(scrape_targets, "free_ports", picked)
    progs = programs(Settings.of(workers=2), launcher=LAUNCHER)
    _, ports = scrape_targets.assign_ports(progs, LAUNCHER, avoid=(8000, 41_001))
    assert asked == [(len(ports), {8000, 41_001})]
    assert sorted(ports.values()) == list(range(50_000, 50_000 + len(ports)))


class _Answers(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def server() -> Iterator[tuple[str, type[_Answers]]]:
    handler = type("Handler", (_Answers,), {})
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/readyz", handler
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def supervisor() -> Iterator[subprocess.Popen[bytes]]:
    """A process that stays up, standing for supervisord while the readiness is polled."""
    process = subprocess.Popen(["sleep", "60"])
    yield process
    process.kill()
    process.wait()


def test_a_port_another_program_answers_on_is_refused_at_once(
    server: tuple[str, type[_Answers]], supervisor: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    """Catches: any 200 taken for the API's readiness. A Prometheus exporter that bound the
    public port after the stack found it free answered every GET with 200, and `inferq up`
    said it was up while submits got 405s."""
    url, handler = server
    handler.body = b"# HELP python_info Python platform information\n"
    with pytest.raises(StackError, match="not as inferq's API"):
        wait_ready(url, supervisor, StackPaths(tmp_path))


def test_the_apis_readiness_is_taken(
    server: tuple[str, type[_Answers]], supervisor: subprocess.Popen[bytes], tmp_path: Path
) -> None:
    url, handler = server
    handler.body = b'{"status": "ready", "checks": {"database": "ok"}}'
    wait_ready(url, supervisor, StackPaths(tmp_path))
