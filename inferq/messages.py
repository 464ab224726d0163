"""The payloads that cross the broker and Redis, in one place.

Celery speaks JSON only; task arguments are ids and small JSON data, never model inputs
(workers read inputs from Postgres, where the job is durable).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence

PREDICT_TASK = "inferq.predict"
RECONCILE_TASK = "inferq.reconcile"


@dataclasses.dataclass(frozen=True)
class PredictRequest:
    """Run these jobs (one id from the API; several when the reconciler republishes)."""

    job_ids: tuple[str, ...]

    def to_args(self) -> list[list[str]]:
        """Celery positional args."""
        return [list(self.job_ids)]


@dataclasses.dataclass(frozen=True)
class Completion:
    """Published on the completion channel when jobs reach a terminal status."""

    job_ids: tuple[str, ...]

    def encode(self) -> str:
        """Wire form: a JSON list of ids."""
        return json.dumps(list(self.job_ids))

    @classmethod
    def decode(cls, data: bytes | str) -> Completion:
        """Parse the wire form; anything malformed yields an empty completion."""
        try:
            ids = json.loads(data)
        except (TypeError, ValueError):
            return cls(())
        return cls(tuple(str(i) for i in ids) if isinstance(ids, list) else ())


def chunks(ids: Sequence[str], size: int) -> list[tuple[str, ...]]:
    """Split ``ids`` into tuples of at most ``size``."""
    return [tuple(ids[i : i + size]) for i in range(0, len(ids), size)]
