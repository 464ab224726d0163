"""Running a batch of jobs: claim in one statement, predict per version, store in one commit.

A redelivered message is harmless: the claim only takes jobs that are still queued, and the
result write only touches jobs this worker still owns.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy.exc import DBAPIError

from db.engine import retry_on_disconnect
from db.fastjson import unstorable
from db.jobs import (
    ClaimedJob,
    JobResult,
    StoredResult,
    claim_jobs,
    requeue_jobs,
    store_results,
    unclaim_jobs,
)
from inferq.core.broker import publish
from inferq.core.errors import ArtifactError, InputError
from inferq.core.handlers import ModelHandler
from inferq.core.messages import PredictRequest
from inferq.core.status import announce
from inferq.domain.result_cache import cache_key
from workers.context import WorkerContext
from workers.delivery import dispatch_finished
from workers.middleware import Batch, after_claim, around

log = logging.getLogger(__name__)

DB_RETRY_PAUSE_S = 1.0


def parse_ids(raw: Sequence[Any]) -> list[uuid.UUID]:
    """The valid UUIDs among ``raw``; a malformed message must not crash the worker."""
    ids = []
    for value in raw:
        try:
            ids.append(uuid.UUID(str(value)))
        except ValueError:
            log.warning("dropping malformed job id", extra={"job_id": repr(value)[:64]})
    return ids


def run_batch(
    ctx: WorkerContext,
    raw_ids: Sequence[Any],
    messages: Sequence[Any] = (),
    fetched: Mapping[str, float] | None = None,
) -> list[JobResult]:
    """Claim, predict and store ``raw_ids`` (from ``messages``, the buffered requests, which
    arrived at the ``fetched`` times: Unix seconds by job id), with the worker's middleware
    around it; returns the results written."""
    with around(ctx, Batch("predict", messages, parse_ids(raw_ids))) as batch:
        _run_batch(ctx, batch, fetched or {})
    return batch.results


def _run_batch(ctx: WorkerContext, batch: Batch, fetched: Mapping[str, float]) -> None:
    ids = batch.job_ids
    if not ids:
        return
    try:
        claimed = retry_on_disconnect(lambda: _claim(ctx, ids, fetched))
    except DBAPIError:
        # Postgres is down: nothing was claimed. Hand the ids back to the broker after a
        # pause, so they are tried again once it returns (the job rows are safe).
        log.warning(
            "database unavailable; returning jobs to the queue",
            extra={"job_ids": [str(job_id) for job_id in ids]},
            exc_info=True,
        )
        batch.failure = "database-unavailable"
        time.sleep(DB_RETRY_PAUSE_S)
        _publish_back(ctx, [(job_id, None) for job_id in ids])
        return
    batch.claimed = claimed = isolate_suspects(ctx, claimed)
    if not claimed:
        return
    try:
        after_claim(ctx, batch)
        results = list(batch.settled.values()) + predict_claimed(ctx, batch.runnable())
        stored = retry_on_disconnect(lambda: _store(ctx, results))
    except Exception:
        release(ctx, claimed)
        raise
    batch.results, batch.stored = results, stored
    try:
        finished = [(str(s.id), s.status) for s in stored]
        details = final_fields(ctx, claimed, results, stored)
        announce(
            ctx.redis, ctx.settings, finished, cache_entries(ctx, claimed, results, stored), details
        )
    except Exception:  # Postgres has the result; pollers still find it, only later.
        log.exception("could not announce completions in Redis")
    dispatch_finished(ctx, stored)


def isolate_suspects(ctx: WorkerContext, claimed: list[ClaimedJob]) -> list[ClaimedJob]:
    """Run a job that was in a batch whose worker died alone, so a poison input fails by
    itself instead of taking its batch-mates' attempts with it."""
    suspects = [job for job in claimed if job.attempts > 1]
    if not suspects or len(claimed) == 1:
        return claimed
    keep, others = suspects[0], [job.id for job in claimed if job is not suspects[0]]
    with ctx.sessions.begin() as session:
        back = unclaim_jobs(session, others, ctx.name)
    _publish_back(ctx, back)
    return [keep]


def _publish_back(ctx: WorkerContext, jobs: Sequence[tuple[uuid.UUID, str | None]]) -> None:
    # One message per job: each may then be claimed (and isolated) on its own.
    for job_id, lane in jobs:
        publish(ctx.app, ctx.settings, PredictRequest((str(job_id),), lane or "online"))


def _claim(
    ctx: WorkerContext, ids: Sequence[uuid.UUID], fetched: Mapping[str, float]
) -> list[ClaimedJob]:
    # One statement that commits itself, on the connection the worker keeps for it: one
    # round trip on the path of every batch, and no pool checkout around it.
    return claim_jobs(ctx.statements, ids, ctx.name, [fetched.get(str(i)) for i in ids])


def _store(ctx: WorkerContext, results: Sequence[JobResult]) -> list[StoredResult]:
    return store_results(ctx.statements, results, ctx.name)


def final_fields(
    ctx: WorkerContext,
    claimed: Sequence[ClaimedJob],
    results: Sequence[JobResult],
    stored: Sequence[StoredResult],
) -> dict[str, dict[str, Any]]:
    """What changed on each stored job, so waiting requests answer without a database read."""
    jobs = {job.id: job for job in claimed}
    by_id = {r.id: r for r in results}
    fields = {}
    for row in stored:
        job, result = jobs[row.id], by_id[row.id]
        fields[str(row.id)] = {
            "status": row.status,
            "output": result.output if row.status == "succeeded" else None,
            "error": result.error,
            "worker": ctx.name,
            "attempts": job.attempts,
            "batch_size": result.batch_size,
            "predict_ms": result.predict_ms,
            "fetched_at": job.fetched_at.isoformat() if job.fetched_at else None,
            "started_at": job.started_at.isoformat(),
            "completed_at": row.completed_at.isoformat() if row.completed_at else None,
        }
    return fields


def cache_entries(
    ctx: WorkerContext,
    claimed: Sequence[ClaimedJob],
    results: Sequence[JobResult],
    stored: Sequence[StoredResult],
) -> list[tuple[str, str]]:
    """``(cache key, output JSON)`` for each job that succeeded and was stored as such."""
    if ctx.settings.worker.cache_ttl_s <= 0:
        return []
    succeeded = {s.id for s in stored if s.status == "succeeded"}
    jobs = {job.id: job for job in claimed}
    entries = []
    for result in results:
        job = jobs[result.id]
        digest = ctx.runtime.digest(job.version_id)
        if result.id in succeeded and digest and result.output is not None:
            key = cache_key(ctx.settings, job.version_id, digest, job.input)
            entries.append((key, result.output_json or json.dumps(result.output)))
    return entries


def predict_claimed(ctx: WorkerContext, claimed: Sequence[ClaimedJob]) -> list[JobResult]:
    """Predict each version's jobs as one batch; every job gets exactly one result."""
    by_version: dict[int, list[ClaimedJob]] = defaultdict(list)
    for job in claimed:
        by_version[job.version_id].append(job)
    results: list[JobResult] = []
    for version_id, jobs in by_version.items():
        try:
            handler = ctx.runtime.handler(version_id)
        except ArtifactError as exc:
            results.extend(_failed(job, "model-unavailable", str(exc)) for job in jobs)
            continue
        size = max(1, int(handler.config.get("max_batch_size") or len(jobs)))
        for start in range(0, len(jobs), size):
            results.extend(predict_group(handler, jobs[start : start + size]))
    return results


def predict_group(handler: ModelHandler, jobs: Sequence[ClaimedJob]) -> list[JobResult]:
    """Prepare each input alone (bad ones fail alone), then predict the rest in one call."""
    results: list[JobResult] = []
    ready: list[tuple[ClaimedJob, Any]] = []
    for job in jobs:
        try:
            ready.append((job, handler.prepare(job.input)))
        except InputError as exc:
            results.append(_failed(job, "invalid-input", str(exc)))
    if not ready:
        return results
    started = time.perf_counter()
    try:
        outputs = handler.predict([item for _, item in ready])
        if len(outputs) != len(ready):
            raise RuntimeError(f"predict returned {len(outputs)} outputs for {len(ready)} inputs")
    except Exception:
        log.exception("batch predict failed; predicting items one by one")
        return results + [_predict_alone(handler, job, item) for job, item in ready]
    predict_ms = (time.perf_counter() - started) * 1000
    for (job, _), output in zip(ready, outputs, strict=True):
        results.append(_succeeded(job, output, len(ready), predict_ms))
    return results


def _predict_alone(handler: ModelHandler, job: ClaimedJob, item: Any) -> JobResult:
    started = time.perf_counter()
    try:
        (output,) = handler.predict([item])
    except Exception as exc:
        return _failed(job, "predict-failed", f"{type(exc).__name__}: {exc}")
    return _succeeded(job, output, 1, (time.perf_counter() - started) * 1000)


def _succeeded(job: ClaimedJob, output: Any, batch_size: int, predict_ms: float) -> JobResult:
    """The job's result: succeeded with ``output``, or failed alone when Postgres could not
    store the output (NaN or Infinity, a NUL character, a value JSON cannot write). One such
    output used to fail its whole batch's store, and the batch went back to the queue again
    and again until its jobs ran out of attempts."""
    try:
        text = json.dumps(output, allow_nan=False)
        problem = unstorable(output) if "\\u" in text else None  # NUL, lone surrogates
    except (TypeError, ValueError, RecursionError) as exc:
        problem = f"cannot be written as JSON ({type(exc).__name__}: {exc})"
    if problem:
        return _failed(job, "invalid-output", f"The model's output {problem}.")
    return JobResult(
        job.id,
        "succeeded",
        output=output,
        batch_size=batch_size,
        predict_ms=predict_ms,
        output_json=text,
    )


def _failed(job: ClaimedJob, kind: str, message: str) -> JobResult:
    return JobResult(job.id, "failed", error={"type": kind, "message": message[:1000]})


def release(ctx: WorkerContext, claimed: Sequence[ClaimedJob]) -> None:
    """Give claimed jobs back after an unexpected failure, so another try can run them."""
    try:
        with ctx.sessions.begin() as session:
            back = requeue_jobs(session, [job.id for job in claimed], ctx.name)
        by_lane: dict[str, list[str]] = defaultdict(list)
        for job_id, lane in back:
            by_lane[lane].append(str(job_id))
        for lane, ids in by_lane.items():
            publish(ctx.app, ctx.settings, PredictRequest(tuple(ids), lane))
    except Exception:  # the reconciler requeues them once their time limit passes
        log.exception("could not release claimed jobs")
