"""Experiments: their arms and policy, sticky assignment, and the checks a new one must pass.

An A/B experiment splits a model's traffic over two or more versions by weight. A subject
(the job's ``user`` within its tenant, or the tenant when no user is given) always lands in
the same arm: its bucket is a SHA-256 of the experiment id and the subject, so every API node
agrees without sharing any state. A shadow experiment serves every job with its first arm,
the active version, and runs the other arms on a copy whose output is stored, never returned.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy.orm import Session

from db.activations import version_by_number
from db.experiments import create_experiment, running_experiment
from db.registry import get_model
from db.tables import Experiment
from inferq.core.errors import Conflict, InvalidInput

MODES = ("ab", "shadow")
ACTIONS = ("promote", "stop")
ARM_NAMES = "ABCDEFGHIJ"
MAX_ARMS = len(ARM_NAMES)
WEIGHT_TOLERANCE = 1e-6


@dataclasses.dataclass(frozen=True)
class Policy:
    """When the scheduler may decide, and what it does then."""

    #: labelled (or judged) jobs each arm needs before any decision on quality
    min_feedback: int = 100
    #: significance level of the comparison (split over the comparisons with 3+ arms)
    alpha: float = 0.05
    #: with a significant winner: make it active (promote), or only end the experiment (stop)
    action: str = "promote"
    #: an arm failing more than this share of its finished jobs is stopped at once...
    guard_error_rate: float = 0.2
    #: ...once it has finished at least this many
    guard_min_jobs: int = 20
    #: with this much feedback per arm and still no winner, end it as inconclusive
    max_feedback: int | None = None

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None) -> Policy:
        """A policy from stored or submitted JSON; missing fields take the defaults."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in (raw or {}).items() if k in known})

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)


@dataclasses.dataclass(frozen=True)
class Arm:
    """One arm: a version, its share of traffic (A/B) and its role."""

    name: str
    version: int
    version_id: int
    sha256: str
    weight: float | None
    #: control (the baseline; in shadow mode the one clients see), treatment, or shadow
    role: str

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Arm:
        """An arm as stored in ``experiments.arms``."""
        return cls(**{f.name: raw.get(f.name) for f in dataclasses.fields(cls)})  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        return dataclasses.asdict(self)


def arms_of(experiment: Experiment) -> list[Arm]:
    """The experiment's arms in their stored order (the first is the baseline)."""
    return [Arm.from_dict(raw) for raw in experiment.arms]


def subject_of(tenant_id: uuid.UUID, user: str | None) -> str:
    """Who stays in one arm: the end user within the tenant, or the tenant itself."""
    return f"user:{tenant_id}:{user}" if user else f"tenant:{tenant_id}"


def bucket(experiment_id: uuid.UUID, subject: str) -> float:
    """A point in [0, 1) that depends only on the experiment and the subject."""
    digest = hashlib.sha256(f"{experiment_id}:{subject}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


def choose_arm(experiment_id: uuid.UUID, arms: Sequence[Arm], subject: str) -> Arm:
    """The weighted arm the subject's bucket falls in; in shadow mode always the control."""
    weighted = [arm for arm in arms if arm.weight]
    if not weighted:
        return arms[0]
    point, edge = bucket(experiment_id, subject), 0.0
    for arm in weighted:
        edge += arm.weight or 0.0
        if point < edge:
            return arm
    return weighted[-1]  # rounding: the weights sum to 1 within a hair


def _invalid(pointer: str, detail: str) -> InvalidInput:
    return InvalidInput(f"{pointer} {detail}", errors=[{"pointer": pointer, "detail": detail}])


def weights_for(mode: str, raw_arms: Sequence[dict[str, Any]]) -> list[float | None]:
    given = [arm.get("weight") for arm in raw_arms]
    if mode == "shadow":
        for i, weight in enumerate(given):
            if weight is not None:
                raise _invalid(
                    f"/arms/{i}/weight",
                    "shadow experiments take no weights: the first arm serves every job "
                    "and every other arm runs on a copy of it",
                )
        return [1.0] + [None] * (len(raw_arms) - 1)
    if all(w is None for w in given):
        return [1 / len(raw_arms)] * len(raw_arms)
    if any(w is None for w in given):
        missing = given.index(None)
        raise _invalid(f"/arms/{missing}/weight", "give every arm a weight, or none for equal ones")
    total = math.fsum(w for w in given if w is not None)
    for scale in (1.0, 100.0):
        if abs(total - scale) <= WEIGHT_TOLERANCE * scale:
            return [w / total for w in given if w is not None]
    raise _invalid("/arms", f"weights sum to {total:g}; they must sum to 1 (or 100)")


def _resolve_arms(
    session: Session, model_id: int, active_id: int | None, mode: str, raw: Sequence[dict]
) -> list[Arm]:
    weights = weights_for(mode, raw)
    seen_versions: set[int] = set()
    seen_names: set[str] = set()
    arms = []
    for i, (spec, weight) in enumerate(zip(raw, weights, strict=True)):
        number, name = spec["version"], spec.get("name") or ARM_NAMES[i]
        version = version_by_number(session, model_id, number)
        if version is None:
            raise _invalid(f"/arms/{i}/version", f"the model has no version {number}")
        if number in seen_versions:
            raise _invalid(f"/arms/{i}/version", f"version {number} is in two arms")
        if name in seen_names:
            raise _invalid(f"/arms/{i}/name", f"arm name {name!r} is used twice")
        seen_versions.add(number)
        seen_names.add(name)
        role = "control" if i == 0 else ("shadow" if mode == "shadow" else "treatment")
        arms.append(Arm(name, number, version.id, version.sha256, weight, role))
    if mode == "shadow" and arms[0].version_id != active_id:
        raise _invalid(
            "/arms/0/version",
            "in shadow mode the first arm is the one clients see: it must be the active version",
        )
    return arms


def start(session: Session, body: dict[str, Any], created_by: str) -> Experiment:
    """Check a schema-valid request against the registry and start the experiment."""
    name = body["model"]
    model = get_model(session, name)
    if model is None:
        raise _invalid("/model", f"there is no model named {name[:64]!r}")
    mode = body.get("mode", "ab")
    arms = _resolve_arms(session, model.id, model.active_version_id, mode, body["arms"])
    policy = Policy.from_dict(body.get("policy"))
    if policy.max_feedback is not None and policy.max_feedback < policy.min_feedback:
        raise _invalid("/policy/max_feedback", "must be at least min_feedback")
    running = running_experiment(session, name)
    row = None
    if running is None:
        row = create_experiment(
            session,
            model_id=model.id,
            name=body.get("name"),
            mode=mode,
            arms=[arm.to_dict() for arm in arms],
            policy=policy.to_dict(),
            created_by=created_by,
        )
    if row is None:
        running = running or running_experiment(session, name)
        raise Conflict(
            f"Model {name!r} already has a running experiment"
            + (f" ({running.id}); stop it first." if running else ".")
        )
    return row
