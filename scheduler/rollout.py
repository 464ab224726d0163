"""Rollout of a trained candidate, per model policy (``INFERQ_RETRAIN_POLICY``):

- ``register``: the candidate stays a candidate; an admin decides;
- ``promote:MARGIN``: it becomes active when its holdout accuracy beats the active version's
  by at least MARGIN;
- ``ab:SHARE`` / ``shadow:SHARE``: when it is not worse on the holdout, an A/B experiment
  sends it SHARE of the traffic (or a shadow experiment runs it on copies of every job);
  the experiment's automatic decision (``action: promote``) finishes the rollout.

A model with no active version gets the candidate at once under any policy but ``register``.
Runs wait with ``rollout = pending`` until the scheduler's pass locks and decides each one,
so two schedulers never roll out one candidate twice.
"""

from __future__ import annotations

import dataclasses
import logging
import uuid
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db.tables import Model, ModelVersion, TrainingRun
from db.training import lock_pending, pending_rollouts
from inferq.core.errors import ConfigError, InferqError
from inferq.core.settings import Settings
from inferq.domain.experiments import start
from inferq.domain.promotion import promote

log = logging.getLogger(__name__)

ACTIONS = ("register", "promote", "ab", "shadow")
#: Holdout metric the gate compares.
METRIC = "holdout_accuracy"


@dataclasses.dataclass(frozen=True)
class Policy:
    """What a model's trained candidates become."""

    action: str = "register"
    #: promote: the margin to beat the active version by; ab: the candidate's traffic share.
    value: float = 0.0


def parse_policies(text: str) -> dict[str, Policy]:
    """``"digits=ab:0.2;other=promote:0.01"`` as policies by model; ConfigError when malformed."""
    policies = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        model, _, spec = item.partition("=")
        action, _, raw = spec.strip().partition(":")
        try:
            value = float(raw) if raw else (0.1 if action == "ab" else 0.0)
        except ValueError:
            value = -1.0
        bad_share = action == "ab" and not 0 < value < 1
        if not model.strip() or action not in ACTIONS or value < 0 or bad_share:
            raise ConfigError(
                f"INFERQ_RETRAIN_POLICY: {item!r} is not model=register, model=promote:MARGIN, "
                "model=ab:SHARE (0..1) or model=shadow"
            )
        policies[model.strip()] = Policy(action, value)
    return policies


def decide(policy: Policy, candidate: dict[str, Any], active: dict[str, Any] | None) -> str:
    """``register``, ``promote``, ``experiment`` or ``hold``, from the holdout metrics."""
    if policy.action == "register":
        return "register"
    if active is None:
        return "promote"
    new, old = candidate.get(METRIC), active.get(METRIC)
    if new is None or old is None:
        return "hold"
    if policy.action == "promote":
        return "promote" if new - old >= policy.value else "hold"
    return "experiment" if new >= old else "hold"


def _experiment_body(model: str, policy: Policy, active: int, candidate: int) -> dict[str, Any]:
    arms: list[dict[str, Any]]
    if policy.action == "shadow":
        arms = [{"version": active}, {"version": candidate}]
    else:
        arms = [
            {"version": active, "weight": 1 - policy.value},
            {"version": candidate, "weight": policy.value},
        ]
    return {
        "model": model,
        "name": f"retrained v{candidate}",
        "mode": "shadow" if policy.action == "shadow" else "ab",
        "arms": arms,
        "policy": {"action": "promote"},
    }


def roll_out(session: Session, settings: Settings, run: TrainingRun) -> tuple[str, str]:
    """Apply the model's policy to the run's candidate; returns ``(rollout, reason)``."""
    model = session.get_one(Model, run.model_id)
    policy = parse_policies(settings.retraining.retrain_policy).get(model.name, Policy())
    candidate = session.get(ModelVersion, run.candidate_version_id)
    if candidate is None:
        return "held", "the candidate version is gone"
    active = session.get(ModelVersion, model.active_version_id) if model.active_version_id else None
    new, old = candidate.metrics or {}, (active.metrics or {}) if active else None
    verdict = decide(policy, new, old)
    compared = f"holdout {new.get(METRIC)} vs active {old.get(METRIC) if old else None}"
    if verdict == "register":
        return "registered", f"policy register: v{candidate.version} waits for an admin"
    if verdict == "hold":
        return "held", f"policy {policy.action}:{policy.value:g}: {compared}; not rolled out"
    if verdict == "promote":
        reason = f"policy {policy.action}:{policy.value:g}: {compared}"
        promote(session, model.name, candidate.version, by=f"training run {run.id}", reason=reason)
        return "promoted", f"{reason}; v{candidate.version} is active"
    assert active is not None
    body = _experiment_body(model.name, policy, active.version, candidate.version)
    experiment = start(session, body, f"training run {run.id}")
    run.experiment_id = experiment.id
    return "experiment", (
        f"policy {policy.action}:{policy.value:g}: {compared}; experiment {experiment.id}"
    )


def apply_pending(sessions: sessionmaker[Session], settings: Settings) -> dict[uuid.UUID, str]:
    """Roll out every run waiting for it, each in its own transaction; what each became."""
    with sessions() as session:
        ids = pending_rollouts(session)
    done = {}
    for run_id in ids:
        try:
            with sessions.begin() as session:
                run = lock_pending(session, run_id)
                if run is None:
                    continue
                try:
                    with session.begin_nested():
                        outcome, reason = roll_out(session, settings, run)
                except InferqError as exc:  # a running experiment, a policy it cannot apply
                    outcome, reason = "held", f"{type(exc).__name__}: {exc}"
                run.rollout, run.rollout_reason = outcome, reason
        except Exception:
            log.exception("rollout failed", extra={"run": str(run_id)})
            continue
        log.info("rollout", extra={"run": str(run_id), "rollout": outcome, "reason": reason})
        done[run_id] = outcome
    return done
