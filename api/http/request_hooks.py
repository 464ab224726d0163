"""Hooks every request passes: the NUL guard, the request id, ``Server-Timing`` and the access
log line."""

from __future__ import annotations

import logging
import time
import uuid

from flask import Flask, Response, g, request

from api.http import timing
from inferq.core.errors import BadRequest

access_log = logging.getLogger("inferq.api.access")


def init_app(app: Flask) -> None:
    """Register the hooks on ``app`` (before :func:`api.http.metrics.init_app`)."""
    app.before_request(_refuse_unstorable_urls)
    app.before_request(_request_id)
    app.after_request(_echo_request_id)


def _refuse_unstorable_urls() -> None:
    """A NUL (``%00``) in the path or the query reaches no resource and would only reach
    Postgres, which refuses it: answer 400 before any handler sees it."""
    if "\x00" in request.path or any(
        "\x00" in key or "\x00" in value for key, value in request.args.items(multi=True)
    ):
        raise BadRequest("The URL holds a NUL character (%00).")


def _request_id() -> None:
    incoming = request.headers.get("X-Request-ID", "")
    g.request_id = incoming[:128] if incoming.isprintable() and incoming else uuid.uuid4().hex
    g.started = time.perf_counter()


def _echo_request_id(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    elapsed_ms = (time.perf_counter() - g.get("started", time.perf_counter())) * 1000
    response.headers["Server-Timing"] = timing.header(elapsed_ms)
    # One structured line per request: with nginx's access log, the request id ties a client's
    # call to the node that served it.
    access_log.info(
        "request",
        extra={
            "request_id": g.get("request_id", ""),
            "job_id": g.get("job_id"),
            "method": request.method,
            "path": request.path,
            "status": response.status_code,
            "duration_ms": round(elapsed_ms, 2),
            "remote_addr": request.remote_addr,
        },
    )
    return response
