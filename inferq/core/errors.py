"""Every error inferq raises on purpose, in one tree.

InferqError
├── ConfigError                 settings that cannot work
├── ForeignRedis                a Redis that another inferq stack claimed
├── UnsafeUrl                   a webhook URL the SSRF guard refuses
├── ModelError                  a model cannot be loaded or run
│   ├── ArtifactError           weights missing, corrupt or of the wrong digest
│   └── InputError              one input the model cannot use (fails that job)
└── Problem                     an HTTP problem (RFC 9457): raised by the API and by the client
    ├── BadRequest              400
    ├── Unauthorized            401
    ├── Forbidden               403
    ├── NotFound                404
    ├── Conflict                409
    ├── Gone                    410
    ├── PayloadTooLarge         413
    ├── UnsupportedMediaType    415
    ├── InvalidInput            422
    ├── RateLimited             429
    ├── ServiceUnavailable      503
    └── ServerError             500 and anything else the client did not expect
"""

from __future__ import annotations

from typing import Any, ClassVar

PROBLEM_BASE = "https://inferq.dev/problems/"


class InferqError(Exception):
    """Raised for any failure inferq names; the root of the tree."""


class ConfigError(InferqError):
    """Raised when settings are missing or cannot work together."""


class ForeignRedis(InferqError):
    """Raised when a Redis belongs to another inferq stack (its claim names another id)."""


class UnsafeUrl(InferqError):
    """Raised when a webhook URL is not http(s) or leads to an address the SSRF guard refuses."""


class ModelError(InferqError):
    """Raised when a model cannot be loaded or run."""


class ArtifactError(ModelError):
    """Raised when a model artifact is missing, corrupt, or its SHA-256 does not match."""


class InputError(ModelError):
    """Raised by a handler when one input cannot be used; only that job fails."""


class Problem(InferqError):
    """Raised to answer an HTTP request with an ``application/problem+json`` body."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "server-error"
    title: ClassVar[str] = "Internal server error"

    def __init__(
        self,
        detail: str,
        *,
        errors: list[dict[str, Any]] | None = None,
        headers: dict[str, str] | None = None,
        status: int | None = None,
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.errors = errors
        self.headers = headers or {}
        if status is not None:
            self.status = status  # type: ignore[misc]  # an unexpected status from a server

    @property
    def type(self) -> str:
        """The problem type URI."""
        return PROBLEM_BASE + self.slug

    def to_dict(self) -> dict[str, Any]:
        """The RFC 9457 body."""
        body: dict[str, Any] = {
            "type": self.type,
            "title": self.title,
            "status": self.status,
            "detail": self.detail,
        }
        if self.errors:
            body["errors"] = self.errors
        return body


class BadRequest(Problem):
    """Raised when a request cannot be parsed (malformed JSON, a non-UUID id)."""

    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(Problem):
    """Raised when the API key is missing, unknown, expired or revoked."""

    status, slug, title = 401, "unauthorized", "Unauthorized"

    def __init__(self, detail: str, **kwargs: Any) -> None:
        kwargs.setdefault("headers", {"WWW-Authenticate": 'Bearer realm="inferq"'})
        super().__init__(detail, **kwargs)


class Forbidden(Problem):
    """Raised when the API key lacks the scope an endpoint needs."""

    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(Problem):
    """Raised when a resource does not exist or belongs to another tenant."""

    status, slug, title = 404, "not-found", "Not found"


class Gone(Problem):
    """Raised when a job or batch existed but retention has removed it (INFERQ_JOB_RETENTION)."""

    status, slug, title = 410, "gone", "Gone"


class Conflict(Problem):
    """Raised when the resource's state forbids the action (cancel a finished job)."""

    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(Problem):
    """Raised when the request body exceeds the configured limit."""

    status, slug, title = 413, "payload-too-large", "Payload too large"


class UnsupportedMediaType(Problem):
    """Raised when the body is not ``application/json``."""

    status, slug, title = 415, "unsupported-media-type", "Unsupported media type"


class InvalidInput(Problem):
    """Raised when a well-formed body breaks the schema (wrong types, unknown model, NaN)."""

    status, slug, title = 422, "invalid-input", "Invalid input"


class RateLimited(Problem):
    """Raised when a rate or quota is exceeded; carries ``Retry-After``."""

    status, slug, title = 429, "rate-limited", "Too many requests"


class ServiceUnavailable(Problem):
    """Raised when a dependency (database, broker) is down or a backlog is full."""

    status, slug, title = 503, "service-unavailable", "Service unavailable"


class ServerError(Problem):
    """Raised for an unexpected server failure; never carries a stack trace."""


PROBLEMS_BY_STATUS: dict[int, type[Problem]] = {
    cls.status: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        Gone,
        NotFound,
        Conflict,
        PayloadTooLarge,
        UnsupportedMediaType,
        InvalidInput,
        RateLimited,
        ServiceUnavailable,
    )
}


def problem_from_response(status: int, body: dict[str, Any] | None) -> Problem:
    """Rebuild the typed problem a server sent (used by :mod:`inferq.client`)."""
    body = body or {}
    cls = PROBLEMS_BY_STATUS.get(status, ServerError)
    detail = str(body.get("detail") or body.get("title") or f"HTTP {status}")
    problem = cls(detail, errors=body.get("errors"), status=status)
    return problem
