"""Shadow runs: a shadow experiment's other arms predict on copies of the served jobs.

The API publishes one ``inferq.shadow`` message per job it serves in a shadow experiment,
on the job's lane, after the job itself. A worker buffers these like predict messages, reads
the inputs in one query, predicts each shadow version's inputs as one batch, and stores the
outputs in ``shadow_results`` in one statement. The job, its output and its client are never
touched: shadow work is a separate message, so it never delays a served job's batch, and a
failure here costs only a comparison. A redelivered message inserts nothing (the primary key
is the job and the version).
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

from db.engine import retry_on_disconnect
from db.experiments import ShadowInput, shadow_inputs, store_shadow_results
from db.jobs import ClaimedJob
from inferq.core.messages import ShadowRequest
from workers.context import WorkerContext
from workers.runner import parse_ids, predict_claimed

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class _Copy:
    job_id: uuid.UUID
    experiment_id: str
    arm: str
    version_id: int


def _copies(requests: Sequence[ShadowRequest]) -> list[_Copy]:
    copies = {}
    for request in requests:
        for job_id in parse_ids(request.job_ids):
            for arm, version_id in request.arms:
                copies[(job_id, version_id)] = _Copy(job_id, request.experiment_id, arm, version_id)
    return list(copies.values())


def run_shadows(ctx: WorkerContext, requests: Sequence[ShadowRequest]) -> int:
    """Predict every requested copy and store the outputs; returns how many were stored."""
    copies = _copies(requests)
    if not copies:
        return 0
    # Busy, not stalled, while it runs: the Liveness middleware around the shadow batch.
    inputs = retry_on_disconnect(lambda: _inputs(ctx, {c.job_id for c in copies}))
    rows = predict_copies(ctx, copies, inputs)
    return retry_on_disconnect(lambda: _store(ctx, rows))


def _inputs(ctx: WorkerContext, job_ids: set[uuid.UUID]) -> dict[uuid.UUID, ShadowInput]:
    with ctx.sessions() as session:
        return {row.id: row for row in shadow_inputs(session, list(job_ids))}


def _store(ctx: WorkerContext, rows: list[dict[str, Any]]) -> int:
    with ctx.sessions.begin() as session:
        return store_shadow_results(session, rows, ctx.name)


def predict_copies(
    ctx: WorkerContext, copies: Sequence[_Copy], inputs: dict[uuid.UUID, ShadowInput]
) -> list[dict[str, Any]]:
    """One batch per shadow version, through the same path as served jobs."""
    by_version: dict[int, list[_Copy]] = defaultdict(list)
    for copy in copies:
        if copy.job_id in inputs:  # a job deleted meanwhile has nothing to compare
            by_version[copy.version_id].append(copy)
    rows = []
    for version_id, group in by_version.items():
        jobs = [
            ClaimedJob(
                id=copy.job_id,
                version_id=version_id,
                input=inputs[copy.job_id].input,
                created_at=inputs[copy.job_id].created_at,
                started_at=inputs[copy.job_id].created_at,
                attempts=1,
            )
            for copy in group
        ]
        results = {result.id: result for result in predict_claimed(ctx, jobs)}
        for copy in group:
            result = results[copy.job_id]
            rows.append(
                {
                    "job_id": str(copy.job_id),
                    "version_id": version_id,
                    "experiment_id": copy.experiment_id,
                    "arm": copy.arm,
                    "status": result.status,
                    "output": result.output,
                    "error": result.error,
                    "predict_ms": result.predict_ms,
                }
            )
    return rows
