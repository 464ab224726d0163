"""Helpers of the security tests: keys of any shape, problem assertions, a webhook receiver."""

from __future__ import annotations

import base64
import datetime as dt
import http.server
import json
import struct
import threading
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from inferq.core.settings import Settings
from inferq.domain.webhooks import verify

PROBLEM = "application/problem+json"


def make_key(
    settings: Settings, tenant: str, scopes: list[str], expires_at: dt.datetime | None = None
) -> str:
    """A new API key of ``tenant`` (created when new) with ``scopes``."""
    from db.keys import create_key, ensure_tenant
    from inferq.cli.common import db_session

    with db_session(settings) as session:
        return create_key(session, ensure_tenant(session, tenant), scopes, expires_at)[0]


def assert_problem(response: Any, status: int, slug: str | None = None) -> dict[str, Any]:
    """``response`` is an RFC 9457 problem with ``status`` (and type ``slug``)."""
    text = response.get_data(as_text=True)
    assert response.status_code == status, (
        f"{response.request.method} {response.request.path}: {text}"
    )
    assert response.mimetype == PROBLEM
    body: dict[str, Any] = json.loads(text)
    assert body["status"] == status and body["title"] and body["detail"]
    if slug:
        assert body["type"].endswith("/" + slug)
    return body


def png_header_only(width: int, height: int) -> str:
    """A tiny PNG that claims ``width`` x ``height`` pixels (what a bomb's header says)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
    return base64.b64encode(png).decode()


class Receiver:
    """A webhook receiver on loopback: answers the next ``fail_first`` calls with 500, then
    200; checks each call's signature with ``secret`` when it is set."""

    def __init__(self, fail_first: int = 0, status: int = 200, location: str | None = None):
        self.fail_first = fail_first
        self.status = status
        self.location = location
        self.secret: str | None = None
        self.calls: list[dict[str, Any]] = []
        self.arrived = threading.Event()
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/hooks/inferq?source=test"

    def _handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        receiver = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k: v for k, v in self.headers.items()}
                valid = receiver.secret is not None and verify(receiver.secret, headers, body)
                failing = len(receiver.calls) < receiver.fail_first
                receiver.calls.append(
                    {"path": self.path, "headers": headers, "body": body, "valid": valid}
                )
                self.send_response(500 if failing else receiver.status)
                if receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                if not failing:
                    receiver.arrived.set()

            def log_message(self, *args: Any) -> None:
                pass

        return Handler

    @contextmanager
    def running(self) -> Iterator[Receiver]:
        self.thread.start()
        try:
            yield self
        finally:
            self.server.shutdown()
            self.server.server_close()
