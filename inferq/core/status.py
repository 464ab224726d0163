"""Job status and completion signals in Redis, shared by workers (writers) and the API.

Postgres is the truth; Redis carries the fast copies: a status key per finished job and one
pub/sub channel on which a worker announces each batch it finished, so long-polls wake at
once instead of polling the database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import redis

from inferq.core.messages import Completion
from inferq.core.settings import Settings


def completion_channel(settings: Settings) -> str:
    """The pub/sub channel announcing finished jobs."""
    return f"{settings.namespace}:jobs:done"


def status_key(settings: Settings, job_id: str) -> str:
    """The Redis key holding a job's last known status."""
    return f"{settings.namespace}:job:{job_id}:status"


def make_redis(settings: Settings, max_connections: int | None = None) -> redis.Redis:
    """A Redis client for status and signals (connects lazily). With ``max_connections``,
    a caller finding them all in use waits up to 5 s for one, then gets a
    ``redis.ConnectionError``; without, every concurrent caller opens its own."""
    options: dict[str, Any] = {
        "socket_timeout": 5,
        "socket_connect_timeout": 5,
        "health_check_interval": 30,
    }
    if max_connections is None:
        return redis.Redis.from_url(settings.effective_redis_url, **options)
    pool = redis.BlockingConnectionPool.from_url(
        settings.effective_redis_url, max_connections=max_connections, timeout=5, **options
    )
    return redis.Redis(connection_pool=pool)


def announce(
    client: redis.Redis,
    settings: Settings,
    finished: Iterable[tuple[str, str]],
    cache: Iterable[tuple[str, str]] = (),
    details: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Store each ``(job_id, status)``, fill the result cache with ``(key, output JSON)``
    and publish the batch's ids: one round trip (a pipeline)."""
    finished = list(finished)
    if not finished:
        return
    pipe = client.pipeline(transaction=False)
    for job_id, status in finished:
        pipe.set(status_key(settings, job_id), status, ex=settings.worker.status_ttl_s)
    if settings.worker.cache_ttl_s > 0:
        for key, output in cache:
            pipe.set(key, output, ex=settings.worker.cache_ttl_s)
    done = Completion(tuple(j for j, _ in finished), details or {})
    pipe.publish(completion_channel(settings), done.encode())
    pipe.execute()


def worker_key(settings: Settings, name: str) -> str:
    """The heartbeat key of a worker; it expires when the worker stops beating."""
    return f"{settings.namespace}:worker:{name}"


def live_workers(client: redis.Redis, settings: Settings) -> set[str]:
    """Names of workers whose heartbeat has not expired."""
    prefix = worker_key(settings, "")
    return {key.decode()[len(prefix) :] for key in client.scan_iter(match=prefix + "*", count=500)}
