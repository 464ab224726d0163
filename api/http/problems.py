"""One place that turns every error into an ``application/problem+json`` response."""

from __future__ import annotations

import json
import logging

from flask import Flask, Response, request
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError
from sqlalchemy.exc import DataError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from werkzeug.exceptions import HTTPException, MethodNotAllowed

from inferq.core.errors import (
    PROBLEM_BASE,
    PROBLEMS_BY_STATUS,
    InvalidInput,
    Problem,
    ServerError,
    ServiceUnavailable,
)

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"


def problem_response(problem: Problem) -> Response:
    """The RFC 9457 response for ``problem``, with its headers."""
    body = {**problem.to_dict(), "instance": request.path}
    response = Response(json.dumps(body), status=problem.status, mimetype=PROBLEM_JSON)
    for name, value in problem.headers.items():
        response.headers[name] = value
    return response


def _from_http(exc: HTTPException) -> Response:
    """Werkzeug's own errors (404 route, 405, 413 body limit) in the same shape."""
    status = exc.code or 500
    known = PROBLEMS_BY_STATUS.get(status)
    slug = known.slug if known else exc.name.lower().replace(" ", "-")
    body = {
        "type": PROBLEM_BASE + slug,
        "title": known.title if known else exc.name,
        "status": status,
        "detail": _DETAILS.get(status, exc.description or exc.name),
        "instance": request.path,
    }
    response = Response(json.dumps(body), status=status, mimetype=PROBLEM_JSON)
    if isinstance(exc, MethodNotAllowed) and exc.valid_methods:
        response.headers["Allow"] = ", ".join(exc.valid_methods)
    return response


_DETAILS = {
    404: "No such endpoint.",
    405: "This endpoint does not accept that method.",
    413: "The request body is larger than this server accepts.",
}


def _dependency_down(exc: Exception) -> Response:
    # Postgres or Redis unreachable is not the client's fault, and it is temporary.
    log.warning("dependency unavailable", extra={"path": request.path, "error": type(exc).__name__})
    return problem_response(
        ServiceUnavailable(
            "A backing service is unavailable; nothing was changed. Retry shortly.",
            headers={"Retry-After": "2"},
        )
    )


def _pool_exhausted(exc: PoolTimeout) -> Response:
    # Every pooled connection stayed taken for INFERQ_API_DB_WAIT_S: the node is overloaded.
    log.warning("no database connection came free", extra={"path": request.path})
    return problem_response(
        ServiceUnavailable(
            "The server is too busy to answer this request now (no database connection came "
            "free in time). Retry shortly.",
            headers={"Retry-After": "2"},
        )
    )


def _unstorable_value(exc: DataError) -> Response:
    # A value the request carried that Postgres refused for its column (a number out of
    # range...): the schemas should have caught it, so log it, but it is the client's input,
    # and its transaction rolled back.
    log.warning("input refused by the database", extra={"path": request.path}, exc_info=True)
    return problem_response(
        InvalidInput("A value in the request is out of the range this service can store.")
    )


def _unexpected(exc: Exception) -> Response:
    # The trace goes to the log with the request id, never to the client.
    log.exception("unhandled error", extra={"path": request.path})
    return problem_response(ServerError("An unexpected error occurred; it has been logged."))


def init_app(app: Flask) -> None:
    """Register the handlers on ``app``."""
    app.register_error_handler(Problem, problem_response)
    app.register_error_handler(HTTPException, _from_http)
    app.register_error_handler(DataError, _unstorable_value)
    app.register_error_handler(OperationalError, _dependency_down)
    app.register_error_handler(PoolTimeout, _pool_exhausted)
    app.register_error_handler(InterfaceError, _dependency_down)
    app.register_error_handler(RedisConnectionError, _dependency_down)
    app.register_error_handler(RedisTimeoutError, _dependency_down)
    app.register_error_handler(Exception, _unexpected)
