"""The live report of an experiment, per arm and between arms.

For each arm: jobs, failures and error rate, latency percentiles (submit to result; for a
shadow arm, its prediction time), and quality from feedback (accuracy with a Wilson
interval). Between arms: the difference in accuracy against the first arm, its confidence
interval and significance: a two-proportion z-test for A/B arms (independent jobs), McNemar's
test for shadow arms (the same jobs judged twice), with ``alpha`` split over the comparisons
(Bonferroni). Shadow arms also report how often they agree with the served output.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

from sqlalchemy.orm import Session

from db.experiments import ArmStats, ShadowStats, arm_stats, shadow_stats
from db.tables import Experiment
from inferq.domain.experiments import Arm, Policy, arms_of
from inferq.domain.significance import (
    Difference,
    paired_proportions,
    two_proportions,
    wilson_interval,
)


@dataclasses.dataclass(frozen=True)
class ArmReport:
    """One arm's numbers."""

    arm: Arm
    jobs: int = 0
    succeeded: int = 0
    failed: int = 0
    canceled: int = 0
    latency_ms: dict[str, float | None] = dataclasses.field(default_factory=dict)
    judged: int = 0
    correct: int = 0
    mean_score: float | None = None
    #: shadow arms: outputs compared with the served one, and how many agreed
    compared: int | None = None
    agreed: int | None = None

    @property
    def finished(self) -> int:
        """Jobs that succeeded or failed (what an error rate is over)."""
        return self.succeeded + self.failed

    @property
    def error_rate(self) -> float | None:
        """Failed share of finished jobs."""
        return self.failed / self.finished if self.finished else None

    @property
    def accuracy(self) -> float | None:
        """Share of judged jobs whose output was right."""
        return self.correct / self.judged if self.judged else None

    def to_dict(self, alpha: float) -> dict[str, Any]:
        """JSON-ready."""
        interval = wilson_interval(self.correct, self.judged, alpha)
        body: dict[str, Any] = {
            **{k: self.arm.to_dict()[k] for k in ("name", "version", "role", "weight")},
            "jobs": self.jobs,
            "succeeded": self.succeeded,
            "failed": self.failed,
            "canceled": self.canceled,
            "error_rate": _round(self.error_rate),
            "latency_ms": self.latency_ms,
            "feedback": self.judged,
            "correct": self.correct,
            "accuracy": _round(self.accuracy),
            "accuracy_ci": [round(v, 4) for v in interval] if interval else None,
            "mean_score": _round(self.mean_score),
        }
        if self.compared is not None:
            agreed = self.agreed or 0
            rate = _round(agreed / self.compared) if self.compared else None
            body["agreement"] = {"compared": self.compared, "agreed": agreed, "rate": rate}
        return body


@dataclasses.dataclass(frozen=True)
class Comparison:
    """``arm`` against ``baseline`` in accuracy."""

    baseline: str
    arm: str
    difference: Difference
    paired_jobs: int | None = None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready."""
        body: dict[str, Any] = {"baseline": self.baseline, "arm": self.arm, "metric": "accuracy"}
        if self.paired_jobs is not None:
            body["paired_jobs"] = self.paired_jobs
        return {**body, **self.difference.to_dict()}


@dataclasses.dataclass(frozen=True)
class Report:
    """Everything known about an experiment now."""

    experiment: Experiment
    model: str
    policy: Policy
    arms: list[ArmReport]
    comparisons: list[Comparison]
    #: shadow mode: per shadow arm, (only the control right, only the shadow right, paired)
    paired: dict[str, tuple[int, int, int]]

    @property
    def alpha(self) -> float:
        """The per-comparison significance level (Bonferroni over the comparisons)."""
        return self.policy.alpha / max(1, len(self.arms) - 1)

    def leader(self) -> str | None:
        """The arm with the best accuracy so far (None before any feedback)."""
        judged = [a for a in self.arms if a.judged]
        return max(judged, key=lambda a: a.accuracy or 0.0).arm.name if judged else None

    def to_dict(self) -> dict[str, Any]:
        """The report as the API and the CLI show it."""
        return {
            **summary(self.experiment, self.model),
            "policy": self.policy.to_dict(),
            "arms": [arm.to_dict(self.policy.alpha) for arm in self.arms],
            "comparisons": [c.to_dict() for c in self.comparisons],
            "leader": self.leader(),
        }


def summary(row: Experiment, model: str) -> dict[str, Any]:
    """What an experiment is and how it ended, without its numbers (listings)."""
    return {
        "id": str(row.id),
        "name": row.name,
        "model": model,
        "mode": row.mode,
        "status": row.status,
        "created_at": _iso(row.created_at),
        "created_by": row.created_by,
        "arms": [
            {k: arm[k] for k in ("name", "version", "role", "weight") if k in arm}
            for arm in row.arms
        ],
        "decision": {
            "decision": row.decision,
            "winner": row.winner,
            "reason": row.reason,
            "decided_at": _iso(row.decided_at),
            "decided_by": row.decided_by,
        }
        if row.status != "running"
        else None,
    }


def _round(value: float | None, digits: int = 4) -> float | None:
    return None if value is None else round(float(value), digits)


def _iso(value: dt.datetime | None) -> str | None:
    return value.isoformat() if value else None


def _served_arm(arm: Arm, stats: ArmStats | None) -> ArmReport:
    if stats is None:
        return ArmReport(arm)
    latency = {
        "p50": _round(stats.latency_p50, 2),
        "p90": _round(stats.latency_p90, 2),
        "p99": _round(stats.latency_p99, 2),
        "predict_p50": _round(stats.predict_ms_p50, 2),
    }
    return ArmReport(
        arm,
        jobs=stats.jobs,
        succeeded=stats.succeeded,
        failed=stats.failed,
        canceled=stats.canceled,
        latency_ms=latency,
        judged=stats.judged,
        correct=stats.correct,
        mean_score=stats.mean_score,
    )


def _shadow_arm(arm: Arm, stats: ShadowStats | None) -> ArmReport:
    if stats is None:
        return ArmReport(arm, compared=0, agreed=0)
    latency = {
        "predict_p50": _round(stats.predict_ms_p50, 2),
        "predict_p90": _round(stats.predict_ms_p90, 2),
        "predict_p99": _round(stats.predict_ms_p99, 2),
    }
    return ArmReport(
        arm,
        jobs=stats.runs,
        succeeded=stats.succeeded,
        failed=stats.failed,
        latency_ms=latency,
        judged=stats.paired,
        correct=stats.correct,
        compared=stats.compared,
        agreed=stats.agreed,
    )


def build_report(session: Session, experiment: Experiment, model: str) -> Report:
    """Read the experiment's aggregates and compare its arms."""
    policy = Policy.from_dict(experiment.policy)
    arms = arms_of(experiment)
    served = {s.arm: s for s in arm_stats(session, experiment.id)}
    shadows: dict[str, ShadowStats] = {}
    if experiment.mode == "shadow":
        shadows = {s.arm: s for s in shadow_stats(session, experiment.id)}
    reports = [
        _shadow_arm(arm, shadows.get(arm.name))
        if arm.role == "shadow"
        else _served_arm(arm, served.get(arm.name))
        for arm in arms
    ]
    paired = {name: (s.control_only, s.shadow_only, s.paired) for name, s in shadows.items()}
    report = Report(experiment, model, policy, reports, [], paired)
    return dataclasses.replace(report, comparisons=compare(report))


def compare(report: Report) -> list[Comparison]:
    """Each arm against the first, at the per-comparison alpha."""
    baseline, *others = report.arms
    found = []
    for arm in others:
        diff = difference(report, baseline, arm)
        if diff is not None:
            paired = report.paired.get(arm.arm.name)
            found.append(
                Comparison(baseline.arm.name, arm.arm.name, diff, paired[2] if paired else None)
            )
    return found


def difference(report: Report, baseline: ArmReport, arm: ArmReport) -> Difference | None:
    """``arm - baseline`` in accuracy: paired for a shadow arm against the control."""
    if arm.arm.role == "shadow" and baseline.arm.role == "control":
        control_only, shadow_only, n = report.paired.get(arm.arm.name, (0, 0, 0))
        return paired_proportions(control_only, shadow_only, n, report.alpha)
    return two_proportions(
        (baseline.correct, baseline.judged), (arm.correct, arm.judged), report.alpha
    )
