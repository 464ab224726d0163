"""Job status and completion signals in Redis, shared by workers (writers) and the API.

Postgres is the truth; Redis carries the fast copies: a status key per finished job and one
pub/sub channel on which a worker announces each batch it finished, so long-polls wake at
once instead of polling the database.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from typing import Any

import redis
from redis.exceptions import NoScriptError

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


# KEYS: the status keys, then the result-cache keys. ARGV: how many status keys there are,
# the status keys' TTL, the cache keys' TTL (seconds), the channel, the message, then each
# key's value in KEYS' order.
_ANNOUNCE = """
local statuses = tonumber(ARGV[1])
for i, key in ipairs(KEYS) do
  redis.call('SET', key, ARGV[5 + i], 'EX', i <= statuses and ARGV[2] or ARGV[3])
end
redis.call('PUBLISH', ARGV[4], ARGV[5])
"""

#: What Redis knows the script by (EVALSHA): the text is sent only when Redis lacks it.
_ANNOUNCE_SHA = hashlib.sha1(_ANNOUNCE.encode()).hexdigest()


def announce(
    client: redis.Redis,
    settings: Settings,
    finished: Iterable[tuple[str, str]],
    cache: Iterable[tuple[str, str]] = (),
    details: Mapping[str, Mapping[str, Any]] | None = None,
) -> None:
    """Store each ``(job_id, status)``, fill the result cache with ``(key, output JSON)``
    and publish the batch's ids: one command, one reply (a pipeline of a SET per job and
    per cache entry cost the worker twice the CPU, most of it in building and reading them).
    """
    finished = list(finished)
    if not finished:
        return
    keys = [status_key(settings, job_id) for job_id, _ in finished]
    values = [status for _, status in finished]
    if settings.worker.cache_ttl_s > 0:
        for key, output in cache:
            keys.append(key)
            values.append(output)
    done = Completion(tuple(j for j, _ in finished), details or {})
    args: tuple[str | int, ...] = (
        len(finished),
        settings.worker.status_ttl_s,
        settings.worker.cache_ttl_s,
        completion_channel(settings),
        done.encode(),
        *values,
    )
    try:
        client.evalsha(_ANNOUNCE_SHA, len(keys), *keys, *args)
    except NoScriptError:  # a Redis that restarted or was flushed since
        client.eval(_ANNOUNCE, len(keys), *keys, *args)


def worker_key(settings: Settings, name: str) -> str:
    """The heartbeat key of a worker; it expires when the worker stops beating."""
    return f"{settings.namespace}:worker:{name}"


def workers_key(settings: Settings) -> str:
    """The set naming every worker that beat and has not been found gone since: an index of
    the heartbeat keys, so reading them costs the number of workers, never a SCAN of a
    keyspace that grows with every finished job (status and result-cache keys)."""
    return f"{settings.namespace}:workers"


def write_beat(client: redis.Redis, settings: Settings, name: str, body: str, ttl_ms: int) -> None:
    """Set a worker's heartbeat key (expiring in ``ttl_ms``) and name it in the index, in
    one transaction: a reader never sees the key without its name."""
    pipe = client.pipeline(transaction=True)
    pipe.set(worker_key(settings, name), body, px=ttl_ms)
    pipe.sadd(workers_key(settings), name)
    pipe.execute()


def remove_beat(client: redis.Redis, settings: Settings, name: str) -> None:
    """A worker that stops cleanly: its key and its name go together."""
    pipe = client.pipeline(transaction=True)
    pipe.delete(worker_key(settings, name))
    pipe.srem(workers_key(settings), name)
    pipe.execute()


# Every indexed worker's heartbeat, in one round trip; a name whose key expired leaves the
# index in the same step (atomically: a beat landing meanwhile re-adds it after). The keys it
# reads are derived from the index, so this runs only on a single Redis, as inferq needs.
_READ_BEATS = """
local out = {}
for _, name in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  local raw = redis.call('GET', ARGV[1] .. name)
  if raw then
    out[#out + 1] = name
    out[#out + 1] = raw
  else
    redis.call('SREM', KEYS[1], name)
  end
end
return out
"""


def read_beats(client: redis.Redis, settings: Settings) -> dict[str, bytes]:
    """``name -> heartbeat JSON`` of every live worker that writes the index (a worker of a
    release before it is not listed: see :func:`beating`)."""
    found = client.eval(_READ_BEATS, 1, workers_key(settings), worker_key(settings, ""))
    return {found[i].decode(): found[i + 1] for i in range(0, len(found), 2)}


def live_workers(client: redis.Redis, settings: Settings) -> set[str]:
    """Names of workers whose heartbeat has not expired."""
    return set(read_beats(client, settings))


def beating(client: redis.Redis, settings: Settings, names: Iterable[str]) -> set[str]:
    """Which of ``names`` have a live heartbeat, read from their own keys (so a worker that
    does not write the index yet, mid-upgrade, still counts as alive)."""
    names = sorted(set(names))
    if not names:
        return set()
    found = client.mget([worker_key(settings, name) for name in names])
    return {name for name, raw in zip(names, found, strict=True) if raw is not None}
