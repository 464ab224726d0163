"""The result cache: outputs in Redis keyed by model version digest + canonical input hash.

A repeated input is answered at submit time, without touching the queue. The API reads it;
workers fill it in the same pipeline that announces their batch.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from inferq.core.canonical import canonical_json
from inferq.core.settings import Settings


def _normalise(value: Any) -> Any:
    # 1 and 1.0 are the same input; Postgres JSONB and the API's parser may disagree on which.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    return value


def canonical_input(value: Any) -> bytes:
    """One text per input: sorted keys, no spaces, integral floats as integers."""
    return canonical_json(_normalise(value))


def cache_key(settings: Settings, version_id: int, version_sha256: str, input: Any) -> str:
    """The Redis key of ``input``'s output from a model version (its id and weights' digest:
    two models may share weights but not handlers)."""
    digest = hashlib.sha256(canonical_input(input)).hexdigest()
    return f"{settings.namespace}:cache:{version_id}:{version_sha256[:16]}:{digest}"


def cache_key_for(
    settings: Settings, version_id: int, version_sha256: str | None, input: Any, enabled: bool
) -> str | None:
    """Where ``input``'s output from a version would be cached, or None where nothing is:
    the cache is off (``cache_ttl_s`` 0, or the model's ``cache`` config false), or the
    version has no weights' digest to key it by."""
    if settings.worker.cache_ttl_s <= 0 or not enabled or not version_sha256:
        return None
    return cache_key(settings, version_id, version_sha256, input)


def decode(reply: Any) -> Any | None:
    """The cached output in a reply to ``GET`` (None for a miss, and for a reply that is an
    error: Redis unreachable, the job just runs)."""
    return json.loads(reply) if isinstance(reply, (bytes, str)) and reply else None
