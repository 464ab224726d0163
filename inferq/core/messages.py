"""The payloads that cross the broker and Redis, in one place.

Celery speaks JSON only; task arguments are ids and small JSON data, never model inputs
(workers read inputs from Postgres, where the job is durable).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar, Protocol

PREDICT_TASK = "inferq.predict"
RECONCILE_TASK = "inferq.reconcile"
WEBHOOK_TASK = "inferq.webhook"
SHADOW_TASK = "inferq.shadow"
TRAIN_TASK = "inferq.train"


class TaskMessage(Protocol):
    """What :func:`inferq.core.broker.publish` sends: a task name, a lane, JSON args."""

    task: ClassVar[str]

    @property
    def lane(self) -> str:
        """The lane (queue) the message goes to."""

    def to_args(self) -> list[Any]:
        """Celery positional args."""


@dataclasses.dataclass(frozen=True)
class PredictRequest:
    """Run these jobs: the jobs an API process accepted together, a batch chunk, or the jobs
    the reconciler or a worker sends back."""

    task: ClassVar[str] = PREDICT_TASK
    job_ids: tuple[str, ...]
    lane: str = "online"

    def to_args(self) -> list[list[str]]:
        """Celery positional args: ``[[job_id, ...]]``."""
        return [list(self.job_ids)]


@dataclasses.dataclass(frozen=True)
class ShadowRequest:
    """Run these jobs again on a shadow experiment's other arms and store the outputs.

    ``arms`` pairs each shadow arm's name with its version id; the copy travels on the
    job's own lane.
    """

    task: ClassVar[str] = SHADOW_TASK
    job_ids: tuple[str, ...]
    experiment_id: str
    arms: tuple[tuple[str, int], ...]
    lane: str = "online"

    def to_args(self) -> list[Any]:
        """Celery positional args: ``[job_ids, experiment_id, [[arm, version_id], ...]]``."""
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


@dataclasses.dataclass(frozen=True)
class WebhookRequest:
    """Deliver a finished job's webhook (``redelivery``: asked for again by its tenant)."""

    task: ClassVar[str] = WEBHOOK_TASK
    job_id: str
    redelivery: bool = False
    lane: ClassVar[str] = "webhooks"

    def to_args(self) -> list[Any]:
        """Celery positional args: ``[job_id, redelivery]``."""
        return [self.job_id, self.redelivery]

    @classmethod
    def from_args(cls, args: Sequence[Any]) -> WebhookRequest:
        """Parse the args of a webhook message; raises ``ValueError`` when malformed."""
        if not 1 <= len(args) <= 2 or not isinstance(args[0], str):
            raise ValueError(f"malformed webhook message: {list(args)[:2]!r}")
        return cls(args[0], bool(args[1]) if len(args) == 2 else False)


@dataclasses.dataclass(frozen=True)
class TrainRequest:
    """Train a new version of ``model``. ``run_id`` is the run the API or the CLI opened;
    None when beat sends it (the worker opens the run). ``trigger``: manual, schedule, drift."""

    task: ClassVar[str] = TRAIN_TASK
    model: str
    run_id: str | None = None
    trigger: str = "schedule"
    lane: ClassVar[str] = "training"

    def to_args(self) -> list[Any]:
        """Celery positional args: ``[model, run_id or None, trigger]``."""
        return [self.model, self.run_id, self.trigger]

    @classmethod
    def from_args(cls, args: Sequence[Any]) -> TrainRequest:
        """Parse the args of a training message; raises ``ValueError`` when malformed."""
        if not 1 <= len(args) <= 3:
            raise ValueError(f"malformed training message: {list(args)[:4]!r}")
        model = args[0]
        run_id = args[1] if len(args) > 1 else None
        trigger = args[2] if len(args) > 2 else "schedule"
        if not isinstance(model, str) or not (run_id is None or isinstance(run_id, str)):
            raise ValueError(f"malformed training message: {list(args)!r}")
        return cls(model, run_id, str(trigger or "schedule"))


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
