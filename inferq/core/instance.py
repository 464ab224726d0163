"""Which stack a Redis belongs to: the claim a stack writes in the Redis it runs, and the
check its processes make before they use one.

Each ``inferq up`` home has an id (``INFERQ_INSTANCE``). The stack that runs its own Redis
claims it: the key ``<namespace>:instance`` holds that id and the home. A process of a stack
refuses a Redis whose claim names another id, so two stacks never mix their jobs through a
URL that came to name the other's server; it says which two they are. A Redis nobody claimed
(a configured one, shared on purpose) is used as before.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from pathlib import Path
from urllib.parse import urlsplit

import redis

from inferq.core.errors import ForeignRedis
from inferq.core.settings import Settings

log = logging.getLogger(__name__)


def claim_key(settings: Settings) -> str:
    """The Redis key that says which stack this namespace's Redis belongs to."""
    return f"{settings.namespace}:instance"


@dataclasses.dataclass(frozen=True)
class Claim:
    """A stack's claim on a Redis: its id and its home."""

    id: str
    home: str

    def encode(self) -> str:
        """The claim as the key's value (JSON)."""
        return json.dumps({"id": self.id, "home": self.home})

    @classmethod
    def decode(cls, raw: bytes | str) -> Claim:
        """A claim read back; a value that is no claim of ours keeps its text as the id."""
        text = raw.decode(errors="replace") if isinstance(raw, bytes) else raw
        try:
            record = json.loads(text)
            return cls(str(record["id"]), str(record.get("home", "?")))
        except (ValueError, KeyError, TypeError):
            return cls(text, "?")


def own_claim(settings: Settings) -> Claim:
    """This stack's claim."""
    return Claim(settings.instance, str(Path(settings.home).resolve()))


def check_claim(client: redis.Redis, settings: Settings, url: str) -> None:
    """Raise :class:`ForeignRedis` when the Redis behind ``client`` (at ``url``) belongs to
    another stack; claim it when it is unclaimed and ``settings.claim_redis``. A process
    without an instance id checks nothing. Redis errors propagate."""
    if not settings.instance:
        return
    mine, key = own_claim(settings), claim_key(settings)
    if settings.claim_redis and client.set(key, mine.encode(), nx=True):
        return
    raw = client.get(key)
    if raw is None:
        return
    found = Claim.decode(raw)
    if found.id != mine.id:
        raise ForeignRedis(
            f"the Redis at {redact(url)} belongs to another inferq stack: {found.id} "
            f"(home {found.home}), not this one: {mine.id} (home {mine.home}); refusing to "
            "mix their jobs. Give each stack its own Redis (or INFERQ_NAMESPACE); if that "
            f"stack is gone for good, delete the key {key!r} there."
        )


def redis_urls(settings: Settings) -> list[str]:
    """The Redis servers this process uses: status and caches, and the broker when it is a
    Redis of its own."""
    urls = [settings.effective_redis_url]
    broker = settings.broker_url or ""
    if broker.startswith(("redis://", "rediss://")) and broker not in urls:
        urls.append(broker)
    return urls


def check_at_start(settings: Settings, wait_s: float = 15.0) -> None:
    """Check every Redis this process uses before it starts (see :func:`check_claim`).

    A Redis that does not answer within ``wait_s`` is not checked here (the process starts,
    as it would without this check, and the reconciler checks on each pass): a process
    started while Redis restarts must not give up for good.
    """
    if not settings.instance:
        return
    for url in redis_urls(settings):
        client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
        try:
            _check_when_up(client, settings, url, wait_s)
        finally:
            client.close()


def _check_when_up(client: redis.Redis, settings: Settings, url: str, wait_s: float) -> None:
    deadline = time.monotonic() + wait_s
    while True:
        try:
            check_claim(client, settings, url)
            return
        except redis.RedisError:
            if time.monotonic() > deadline:
                log.warning(
                    "Redis does not answer; its owner is not checked", extra={"url": redact(url)}
                )
                return
            time.sleep(0.25)


def redact(url: str) -> str:
    """``url`` without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()
