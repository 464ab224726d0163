"""Per-API-key request rate: a token bucket in Redis, one atomic Lua script per request.

Each key's bucket holds up to ``key_rate_burst`` tokens and refills at ``key_rate_per_s``;
a request takes one token or is refused with 429 and ``Retry-After``. The script reads
Redis's clock, so every API node shares one bucket per key and no node's clock matters.
(``limits``, the library behind Flask-Limiter, offers windows but no token bucket, and a
token bucket is what lets a quiet client burst.)

Every authenticated response carries the IETF draft's ``RateLimit-Limit``,
``RateLimit-Remaining`` and ``RateLimit-Reset`` (seconds until the bucket is full again).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import uuid

from flask import Flask, Response, g
from redis.exceptions import RedisError

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
    try:
        script = st.redis.register_script(TOKEN_BUCKET)
        allowed, tokens, wait, full = script(keys=[bucket_key(st, key_id)], args=[rate, burst])
    except RedisError:
        log.warning("rate limiter unavailable; letting the request through", exc_info=True)
        return None
    return Verdict(
        allowed=bool(int(allowed)),
        limit=burst,
        remaining=int(float(tokens)),
        retry_after_s=max(1, math.ceil(float(wait))),
        reset_s=math.ceil(float(full)),
    )


def enforce(st: ApiState, key_id: uuid.UUID) -> None:
    """Count this request against the caller's key; 429 with ``Retry-After`` when over."""
    verdict = take(st, key_id)
    if verdict is None:
        return
    g.rate_limit = verdict
    if not verdict.allowed:
        raise RateLimited(
            f"This API key is over its rate of {st.settings.quotas.key_rate_per_s:g} requests per "
            f"second (bursts of {verdict.limit}); retry in {verdict.retry_after_s} s.",
            headers={"Retry-After": str(verdict.retry_after_s), **verdict.headers()},
        )


def _add_headers(response: Response) -> Response:
    verdict = g.get("rate_limit")
    if verdict is not None:
        for name, value in verdict.headers().items():
            response.headers.setdefault(name, value)
    return response


def init_app(app: Flask) -> None:
    """Add the rate-limit headers to every response of a counted request."""
    app.after_request(_add_headers)
