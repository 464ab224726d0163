"""The payloads that cross the broker and Redis, in one place.

Celery speaks JSON only; task arguments are ids and small JSON data, never model inputs
(workers read inputs from Postgres, where the job is durable).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any

PREDICT_TASK = "inferq.predict"
RECONCILE_TASK = "inferq.reconcile"
#: Args ``[job_id, redelivery]``: deliver a finished job's webhook (lane ``webhooks``).
WEBHOOK_TASK = "inferq.webhook"
SHADOW_TASK = "inferq.shadow"
#: Args ``[model, run_id or None, trigger]``: train a new version (lane ``training``); beat
#: sends it with no run id, and the worker opens the run.
TRAIN_TASK = "inferq.train"


@dataclasses.dataclass(frozen=True)
class PredictRequest:
    """Run these jobs (one id from the API; several when the reconciler republishes)."""

    job_ids: tuple[str, ...]

    def to_args(self) -> list[list[str]]:
        """Celery positional args."""
        return [list(self.job_ids)]


@dataclasses.dataclass(frozen=True)
class ShadowRequest:
    """Run these jobs again on a shadow experiment's other arms and store the outputs.

    ``arms`` pairs each shadow arm's name with its version id.
    """

    job_ids: tuple[str, ...]
    experiment_id: str
    arms: tuple[tuple[str, int], ...]

    def to_args(self) -> list[Any]:
        """Celery positional args."""
        return [list(self.job_ids), self.experiment_id, [list(arm) for arm in self.arms]]

    @classmethod
    def from_args(cls, args: Sequence[Any]) -> ShadowRequest:
        """Parse the args of a shadow message; raises ``ValueError`` when malformed."""
        try:
            job_ids, experiment_id, arms = args
            return cls(
                tuple(str(i) for i in job_ids),
                str(experiment_id),
                tuple((str(name), int(version_id)) for name, version_id in arms),
            )
        except (TypeError, ValueError) as exc:
            raise ValueError(f"malformed shadow message: {exc}") from exc


#: Above this size a completion carries ids only, and waiters read the jobs from Postgres.
MAX_COMPLETION_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True)
class Completion:
    """Published on the completion channel when jobs reach a terminal status.

    ``jobs`` holds each job's final fields (status, output, timings…) so a waiting request
    can answer without reading the job back from Postgres.
    """

    job_ids: tuple[str, ...]
    jobs: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)

    def encode(self) -> str:
        """Wire form: ``{"ids": [...], "jobs": {id: fields}}`` (fields dropped when large)."""
        text = json.dumps({"ids": list(self.job_ids), "jobs": self.jobs}, default=str)
        if len(text) > MAX_COMPLETION_BYTES:
            text = json.dumps({"ids": list(self.job_ids), "jobs": {}})
        return text

    @classmethod
    def decode(cls, data: bytes | str) -> Completion:
        """Parse the wire form; anything malformed yields an empty completion."""
        try:
            body = json.loads(data)
        except (TypeError, ValueError):
            return cls(())
        if not isinstance(body, dict) or not isinstance(body.get("ids"), list):
            return cls(())
        jobs = body.get("jobs")
        return cls(tuple(str(i) for i in body["ids"]), jobs if isinstance(jobs, dict) else {})


def chunks(ids: Sequence[str], size: int) -> list[tuple[str, ...]]:
    """Split ``ids`` into tuples of at most ``size``."""
    return [tuple(ids[i : i + size]) for i in range(0, len(ids), size)]
