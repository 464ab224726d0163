"""Per-API-key request rate: a token bucket in Redis, one atomic Lua script per request.

Each key's bucket holds up to ``key_rate_burst`` tokens and refills at ``key_rate_per_s``;
a request takes one token or is refused with 429 and ``Retry-After``. The script reads
Redis's clock, so every API node shares one bucket per key and no node's clock matters.
(``limits``, the library behind Flask-Limiter, offers windows but no token bucket, and a
token bucket is what lets a quiet client burst.)

A route takes the token as it authenticates the caller, except a submit: it takes its token
in the Redis round trip it makes anyway, with its result-cache lookup (:class:`DeferredToken`,
``api.services.jobs.accept``), once its body is known to be valid and before anything it
does reaches Postgres or the broker (alone first, where it must read its model from
Postgres).

Every authenticated response carries the IETF draft's ``RateLimit-Limit``,
``RateLimit-Remaining`` and ``RateLimit-Reset`` (seconds until the bucket is full again).
"""

from __future__ import annotations

import dataclasses
import hashlib
import logging
import math
import uuid
from typing import Any

from flask import Flask, Response, g
from redis.client import Pipeline
from redis.exceptions import NoScriptError, RedisError

from api.state import ApiState
from inferq.core.errors import RateLimited

log = logging.getLogger(__name__)

# KEYS[1]: the bucket; ARGV: rate (tokens/s), burst (capacity). Returns
# {allowed (0/1), tokens left, seconds until one token, seconds until full} (as strings:
# Lua numbers would be truncated to integers on the way out).
TOKEN_BUCKET = """
local rate, burst = tonumber(ARGV[1]), tonumber(ARGV[2])
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local state = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(state[1]) or burst
local at = tonumber(state[2]) or now
tokens = math.min(burst, tokens + math.max(0, now - at) * rate)
local allowed = 0
if tokens >= 1 then
  tokens = tokens - 1
  allowed = 1
end
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], math.ceil(burst / rate * 1000) + 1000)
return {allowed, tostring(tokens), tostring(math.max(0, 1 - tokens) / rate),
        tostring((burst - tokens) / rate)}
"""


#: What Redis knows the script by (EVALSHA): the text is sent only when Redis lacks it.
TOKEN_BUCKET_SHA = hashlib.sha1(TOKEN_BUCKET.encode()).hexdigest()


@dataclasses.dataclass(frozen=True)
class Verdict:
    """The bucket's answer to one request."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_s: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        """The rate-limit headers describing the bucket after this request."""
        return {
            "RateLimit-Limit": str(self.limit),
            "RateLimit-Remaining": str(self.remaining),
            "RateLimit-Reset": str(self.reset_s),
        }


def bucket_key(st: ApiState, key_id: uuid.UUID) -> str:
    """The Redis key of an API key's bucket."""
    return f"{st.settings.namespace}:ratelimit:{key_id}"


def take(st: ApiState, key_id: uuid.UUID) -> Verdict | None:
    """Take a token from the caller's bucket; None when rate limiting is off or Redis fails
    (the limiter fails open: nginx's per-address limit still stands in front)."""
    rate, burst = st.settings.quotas.key_rate_per_s, st.settings.quotas.key_rate_burst
    if rate <= 0:
        return None
    args = (TOKEN_BUCKET_SHA, 1, bucket_key(st, key_id), rate, burst)

    def fill(pipe: Pipeline) -> int:
        pipe.evalsha(*args)
        return 1

    # In a round trip shared with the requests in flight beside it (api.services.shared_pipeline).
    reply = st.redis_trips.run(fill)[0]
    try:
        if isinstance(reply, NoScriptError):  # a Redis that restarted or was flushed since
            st.redis.script_load(TOKEN_BUCKET)
            reply = st.redis.evalsha(*args)
        elif isinstance(reply, Exception):
            raise reply
    except RedisError:
        log.warning("rate limiter unavailable; letting the request through", exc_info=True)
        return None
    return _verdict(burst, reply)


def queue_take(pipe: Pipeline, st: ApiState, key_id: uuid.UUID) -> bool:
    """Queue the take of the caller's token on ``pipe``, to go in the same round trip as the
    caller's other commands; False (nothing queued) when rate limiting is off. Read the
    reply with :func:`verdict_of`."""
    rate, burst = st.settings.quotas.key_rate_per_s, st.settings.quotas.key_rate_burst
    if rate <= 0:
        return False
    pipe.evalsha(TOKEN_BUCKET_SHA, 1, bucket_key(st, key_id), rate, burst)
    return True


def verdict_of(st: ApiState, key_id: uuid.UUID, reply: Any) -> Verdict | None:
    """The verdict in the reply to :func:`queue_take` (a pipeline run with
    ``raise_on_error=False``). Where Redis did not know the script yet, the token is taken
    again alone, once the script is loaded; where it failed, None (fail open)."""
    if isinstance(reply, NoScriptError):
        return take(st, key_id)
    if isinstance(reply, Exception):
        log.warning("rate limiter unavailable; letting the request through", exc_info=reply)
        return None
    return _verdict(st.settings.quotas.key_rate_burst, reply)


def _verdict(burst: int, reply: Any) -> Verdict:
    allowed, tokens, wait, full = reply
    return Verdict(
        allowed=bool(int(allowed)),
        limit=burst,
        remaining=int(float(tokens)),
        retry_after_s=max(1, math.ceil(float(wait))),
        reset_s=math.ceil(float(full)),
    )


def enforce(st: ApiState, key_id: uuid.UUID) -> None:
    """Count this request against the caller's key; 429 with ``Retry-After`` when over."""
    apply(st, take(st, key_id))


def apply(st: ApiState, verdict: Verdict | None) -> None:
    """Act on ``verdict``: note it for the response's headers, or refuse with 429 and
    ``Retry-After`` when the caller is over its rate (None: not counted, nothing to do)."""
    if verdict is None:
        return
    g.rate_limit = verdict
    if not verdict.allowed:
        raise RateLimited(
            f"This API key is over its rate of {st.settings.quotas.key_rate_per_s:g} requests per "
            f"second (bursts of {verdict.limit}); retry in {verdict.retry_after_s} s.",
            headers={"Retry-After": str(verdict.retry_after_s), **verdict.headers()},
        )


class DeferredToken:
    """A request's token, taken once, by the view instead of as the caller authenticates:
    alone (:meth:`take_now`) before the view first reads past its own process, or queued in
    a pipeline the view sends anyway (:meth:`queue`, then :meth:`settle` with the reply)."""

    def __init__(self, st: ApiState, key_id: uuid.UUID) -> None:
        self._st, self._key_id = st, key_id
        self.taken = False

    @property
    def would_count(self) -> bool:
        """Whether taking the token would reach Redis: not taken yet, and rate limiting on."""
        return not self.taken and self._st.settings.quotas.key_rate_per_s > 0

    def take_now(self) -> None:
        """Take the token alone (429 when over the rate), unless it was taken already."""
        if not self.taken:
            self.taken = True
            enforce(self._st, self._key_id)

    def queue(self, pipe: Pipeline) -> bool:
        """Queue the take on ``pipe`` unless taken already; whether it was queued."""
        if self.taken:
            return False
        self.taken = queue_take(pipe, self._st, self._key_id)
        return self.taken

    def settle(self, reply: Any) -> None:
        """Act on the reply to what :meth:`queue` queued (429 when over the rate)."""
        apply(self._st, verdict_of(self._st, self._key_id, reply))


def deferred_token() -> DeferredToken:
    """The current request's token, left to its view (``require(..., take_token=False)``)."""
    token: DeferredToken = g.deferred_token
    return token


def _add_headers(response: Response) -> Response:
    verdict = g.get("rate_limit")
    if verdict is not None:
        for name, value in verdict.headers().items():
            response.headers.setdefault(name, value)
    return response


def init_app(app: Flask) -> None:
    """Add the rate-limit headers to every response of a counted request."""
    app.after_request(_add_headers)
