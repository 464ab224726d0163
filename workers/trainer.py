"""Retraining a model from its handler's base data and its users' labelled feedback.

A run trains from the active version's weights (or from scratch when there is none) on the
base data plus four fifths of the labelled feedback, then judges the candidate, and the
active version beside it, on the fifth held back (chosen by job id, so the same jobs are
held back run after run) and on the handler's fixed holdout. The candidate is registered
with those metrics and never activated here: the scheduler's rollout policy decides. Any
failure ends the run as ``failed`` with its reason, and the active version keeps serving.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

import jsonschema

from db.registry import get_model
from db.tables import Model, ModelVersion
from db.training import (
    LabelledJob,
    finish_run,
    labelled_feedback,
    open_run,
    set_progress,
    start_run,
)
from inferq.core.artifacts import read_tensors
from inferq.core.handlers import Example, ModelHandler, handler_class
from inferq.domain.registration import add_version_of
from inferq.domain.weights import store_tensors
from workers.context import WorkerContext

log = logging.getLogger(__name__)

#: One job in this many (by id) is held back from training to judge versions on.
EVAL_EVERY = 5


def held_back(job_id: uuid.UUID) -> bool:
    """Whether a job's feedback is kept for evaluation rather than training."""
    return job_id.int % EVAL_EVERY == 0


def accuracy(handler: ModelHandler, examples: Sequence[Example]) -> float | None:
    """Share of ``examples`` whose predicted ``label`` is the true one (None: no examples)."""
    if not examples:
        return None
    right = 0
    for start in range(0, len(examples), 256):
        chunk = examples[start : start + 256]
        outputs = handler.predict([handler.prepare(e.input) for e in chunk])
        right += sum(out.get("label") == e.label for out, e in zip(outputs, chunk, strict=True))
    return round(right / len(examples), 4)


def _examples(
    jobs: Sequence[LabelledJob], label_schema: Mapping[str, Any] | None
) -> tuple[list[Example], list[Example], int]:
    """``(train, eval, invalid)``: labels that do not match the model's label schema (it may
    have changed since the feedback was given) are left out and counted."""
    train: list[Example] = []
    evaluation: list[Example] = []
    invalid = 0
    for job in jobs:
        if label_schema is not None and not jsonschema.Draft202012Validator(label_schema).is_valid(
            job.label
        ):
            invalid += 1
            continue
        (evaluation if held_back(job.job_id) else train).append(Example(job.input, job.label))
    return train, evaluation, invalid


def run_training(
    ctx: WorkerContext, model_name: str, run_id: str | None, trigger: str, *, seed: int = 0
) -> uuid.UUID | None:
    """The training task's body: open (beat) or start (API, CLI) the run, train, register.

    Returns the run's id, or None when there was nothing to do (another run is open, the
    run was taken by another delivery, or the model is gone).
    """
    with ctx.sessions.begin() as session:
        model = get_model(session, model_name)
        if model is None:
            log.warning("training: no model %r", model_name)
            return None
        if run_id is None:
            run = open_run(
                session,
                model.id,
                trigger=trigger,
                requested_by=trigger,
                stale_after_s=ctx.settings.retraining.training_time_limit_s,
            )
            if run is None:
                log.info("training: %s already has an open run", model_name)
                return None
            run_id = str(run.id)
        rid = uuid.UUID(run_id)
        if not start_run(session, rid, model.active_version_id):
            return None
        model_id, active_id = model.id, model.active_version_id
    try:
        fields = _train(ctx, rid, model_id, active_id, seed)
    except Exception as exc:  # any failure is the run's outcome; the worker lives on
        log.exception("training run failed", extra={"run": str(rid), "model": model_name})
        with ctx.sessions.begin() as session:
            finish_run(
                session,
                rid,
                status="failed",
                error=f"{type(exc).__name__}: {exc}"[:4000],
                stage="failed",
            )
        return rid
    with ctx.sessions.begin() as session:
        finish_run(session, rid, status="succeeded", progress=1.0, stage="done", **fields)
    log.info("training run succeeded", extra={"run": str(rid), "model": model_name})
    return rid


def _train(
    ctx: WorkerContext, rid: uuid.UUID, model_id: int, active_id: int | None, seed: int
) -> dict[str, Any]:
    with ctx.sessions() as session:
        model = session.get_one(Model, model_id)
        handler_name, config, label_schema = model.handler, dict(model.config), model.label_schema
        jobs = labelled_feedback(session, model_id)
        active_metrics = _version_metrics(session, active_id)
    train, evaluation, invalid = _examples(jobs, label_schema)
    cls = handler_class(handler_name)
    active, start_from = None, None
    if active_id is not None:
        active, path = ctx.runtime.local_artifact(active_id)
        start_from = read_tensors(path)
    _progress(ctx, rid, 0.2, f"training on {len(train)} feedback examples")
    trained = cls(ctx.runtime.device, config).train(
        train,
        start_from=start_from[0] if start_from else None,
        seed=seed,
        **dict(config.get("train_options") or {}),
    )
    _progress(ctx, rid, 0.8, "evaluating")
    candidate = cls(ctx.runtime.device, config)
    candidate.load(trained.tensors, trained.metadata)
    candidate_metrics = {**trained.metrics, "feedback_accuracy": accuracy(candidate, evaluation)}
    active_report = dict(active_metrics)
    if start_from is not None:
        current = cls(ctx.runtime.device, config)
        current.load(*start_from)
        active_report["feedback_accuracy"] = accuracy(current, evaluation)
    _progress(ctx, rid, 0.9, "registering")
    artifact = store_tensors(ctx.runtime.cache.store, trained.tensors, trained.metadata)
    with ctx.sessions.begin() as session:
        model = session.get_one(Model, model_id)
        version = add_version_of(
            session,
            model,
            artifact,
            metrics={k: v for k, v in candidate_metrics.items() if v is not None},
            created_by=f"training run {rid}",
            activate=False,
        )
        number = version.version
        candidate_id = version.id
    return {
        "candidate_version_id": candidate_id,
        "feedback_train": len(train),
        "feedback_eval": len(evaluation),
        "metrics": {
            "candidate": {"version": number, **candidate_metrics},
            "active": {"version": active.version if active else None, **active_report},
            "feedback_invalid": invalid,
        },
        "rollout": "pending",
    }


def _version_metrics(session: Any, version_id: int | None) -> dict[str, Any]:
    if version_id is None:
        return {}
    version = session.get(ModelVersion, version_id)
    return dict(version.metrics or {}) if version is not None else {}


def _progress(ctx: WorkerContext, rid: uuid.UUID, progress: float, stage: str) -> None:
    with ctx.sessions.begin() as session:
        set_progress(session, rid, progress, stage)
