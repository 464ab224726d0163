"""What happens around every batch a worker runs, hung off hooks instead of the task bodies.

As dramatiq's middleware: each piece of cross-cutting work (task events for Flower,
liveness, metrics and the batch log, the attempts cap) is a class with hooks the runner
calls at fixed points of a batch. A hook that raises is logged and skipped: it never fails
the batch or kills the worker.

    before_batch  the batch starts (messages taken from the buffer, ids parsed)
    after_claim   the jobs are claimed; a hook may settle some without running them
    after_batch   the batch ended: stored, handed back, or raised (``error``)
"""

from __future__ import annotations

import dataclasses
import logging
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from db.jobs import ClaimedJob, JobResult, StoredResult
from workers import events
from workers.metrics import after_batch, batch_failed

if TYPE_CHECKING:
    from workers.context import WorkerContext

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Batch:
    """One batch as the hooks see it, filled in as it goes."""

    kind: str  # "predict" or "shadow"
    messages: Sequence[Any] = ()
    job_ids: list[uuid.UUID] = dataclasses.field(default_factory=list)
    claimed: list[ClaimedJob] = dataclasses.field(default_factory=list)
    #: Results hooks decided before prediction (the attempts cap), by job id.
    settled: dict[uuid.UUID, JobResult] = dataclasses.field(default_factory=dict)
    results: list[JobResult] = dataclasses.field(default_factory=list)
    stored: list[StoredResult] = dataclasses.field(default_factory=list)
    #: Why the batch was handed back whole without an exception (metrics label).
    failure: str | None = None
    started: float = dataclasses.field(default_factory=time.monotonic)

    def runnable(self) -> list[ClaimedJob]:
        """The claimed jobs no hook settled: what the model predicts."""
        return [job for job in self.claimed if job.id not in self.settled]


class Middleware:
    """Base class: every hook does nothing."""

    def before_batch(self, ctx: WorkerContext, batch: Batch) -> None:
        """The batch starts."""

    def after_claim(self, ctx: WorkerContext, batch: Batch) -> None:
        """The jobs are claimed; settle some in ``batch.settled`` to keep them from running."""

    def after_batch(self, ctx: WorkerContext, batch: Batch, error: BaseException | None) -> None:
        """The batch ended (``error``: what it raised)."""


class TaskEvents(Middleware):
    """``task-started`` and ``task-succeeded``/``task-failed`` for each message (Flower)."""

    def before_batch(self, ctx: WorkerContext, batch: Batch) -> None:
        events.started(batch.messages)

    def after_batch(self, ctx: WorkerContext, batch: Batch, error: BaseException | None) -> None:
        if error is None:
            events.succeeded(batch.messages, time.monotonic() - batch.started)
        else:
            events.failed(batch.messages, error)


class Liveness(Middleware):
    """A running batch blocks the consumer loop on purpose: it is busy, not stalled."""

    def before_batch(self, ctx: WorkerContext, batch: Batch) -> None:
        ctx.liveness.enter()

    def after_batch(self, ctx: WorkerContext, batch: Batch, error: BaseException | None) -> None:
        ctx.liveness.leave()


class AttemptsCap(Middleware):
    """A job that keeps killing or failing its worker is a poison input: after
    ``max_attempts`` claims it fails as ``attempts-exhausted`` instead of running again."""

    def after_claim(self, ctx: WorkerContext, batch: Batch) -> None:
        for job in batch.claimed:
            if job.attempts > ctx.settings.worker.max_attempts:
                message = (
                    f"gave up after {job.attempts - 1} attempts; the job kept failing its worker"
                )
                batch.settled[job.id] = JobResult(
                    job.id, "failed", error={"type": "attempts-exhausted", "message": message}
                )


class Metrics(Middleware):
    """The worker's Prometheus metrics and its one log line per stored batch."""

    def after_batch(self, ctx: WorkerContext, batch: Batch, error: BaseException | None) -> None:
        if batch.kind != "predict":
            return
        if error is not None:
            batch_failed(ctx, "exception")
        elif batch.failure is not None:
            batch_failed(ctx, batch.failure)
        elif batch.claimed:
            after_batch(ctx, batch.claimed, batch.results, batch.stored)


def default_middleware() -> list[Middleware]:
    """What every worker runs, in order (``after_batch`` hooks run in reverse)."""
    return [Liveness(), TaskEvents(), AttemptsCap(), Metrics()]


@contextmanager
def around(ctx: WorkerContext, batch: Batch) -> Iterator[Batch]:
    """Run ``before_batch`` hooks, the body, then ``after_batch`` hooks (with its error)."""
    for hook in ctx.middleware:
        _guarded(hook.before_batch, ctx, batch)
    try:
        yield batch
    except BaseException as exc:
        for hook in reversed(ctx.middleware):
            _guarded(hook.after_batch, ctx, batch, exc)
        raise
    for hook in reversed(ctx.middleware):
        _guarded(hook.after_batch, ctx, batch, None)


def after_claim(ctx: WorkerContext, batch: Batch) -> None:
    """Run every ``after_claim`` hook."""
    for hook in ctx.middleware:
        _guarded(hook.after_claim, ctx, batch)


def _guarded(hook: Any, *args: Any) -> None:
    try:
        hook(*args)
    except Exception:
        log.exception("a worker middleware hook failed", extra={"hook": repr(hook)[:120]})
