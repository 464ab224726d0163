"""Deciding experiments: a periodic check in the scheduler process, never in a worker.

Each pass looks at every running experiment and, in this order:

1. the guard rail: an arm that failed more than ``guard_error_rate`` of at least
   ``guard_min_jobs`` finished jobs stops the experiment at once (traffic returns to the
   active version);
2. once every arm has ``min_feedback`` judged jobs, an arm significantly better than every
   other (``alpha`` split over the comparisons) wins: with ``action: promote`` it becomes the
   active version, with ``action: stop`` the experiment only ends; either way the row records
   the decision and the numbers behind it;
3. with ``max_feedback`` per arm and still no winner, the experiment ends as inconclusive.

A decision locks the experiment row (``FOR UPDATE SKIP LOCKED``) and is written only while it
is still running, so two schedulers, or an admin stopping it meanwhile, never decide twice.
Checking a running test repeatedly inflates false positives; ``min_feedback`` (and a small
``alpha``) is what keeps that in bounds.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import uuid

from sqlalchemy.orm import Session, sessionmaker

from db.experiments import finish, get_experiment, lock_running, running_ids
from inferq.domain.experiment_report import ArmReport, Report, build_report, difference
from inferq.domain.promotion import promote
from inferq.domain.significance import Difference

log = logging.getLogger(__name__)

DECIDED_BY = "scheduler"


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What to do with an experiment, and why."""

    status: str  # concluded | stopped
    decision: str  # winner | guard | inconclusive (promoted/kept once applied)
    reason: str
    winner: ArmReport | None = None


def _describe(arm: ArmReport) -> str:
    return f"arm {arm.arm.name} (v{arm.arm.version})"


def guard(report: Report) -> Verdict | None:
    """Stop at once when an arm's error rate is over the guard rail."""
    limit, needed = report.policy.guard_error_rate, report.policy.guard_min_jobs
    for arm in report.arms:
        rate = arm.error_rate
        if rate is not None and arm.finished >= needed and rate > limit:
            return Verdict(
                "stopped",
                "guard",
                f"guard rail: {_describe(arm)} failed {arm.failed} of {arm.finished} finished "
                f"jobs ({rate:.1%} > {limit:.1%})",
            )
    return None


def winner(report: Report) -> Verdict | None:
    """The arm significantly better than every other, once each has enough feedback."""
    policy = report.policy
    if any(arm.judged < policy.min_feedback for arm in report.arms):
        return None
    best = max(report.arms, key=lambda arm: arm.accuracy or 0.0)
    diffs = []
    for other in report.arms:
        if other is best:
            continue
        diff = lead(report, best, other)
        if diff is None or diff.difference <= 0 or not diff.significant:
            return _inconclusive(report)
        diffs.append((other, diff))
    lines = "; ".join(
        f"vs {_describe(other)}: {other.accuracy or 0.0:.3f}, difference {d.difference:+.3f} "
        f"({1 - d.alpha:.1%} CI {d.ci[0]:+.3f}..{d.ci[1]:+.3f}), p={d.p_value:.2g} < "
        f"{d.alpha:g} ({d.test})"
        for other, d in diffs
    )
    reason = (
        f"{_describe(best)} is significantly better: accuracy {best.accuracy or 0.0:.3f} over "
        f"{best.judged} judged jobs; {lines}"
    )
    return Verdict("concluded", "winner", reason, best)


def lead(report: Report, best: ArmReport, other: ArmReport) -> Difference | None:
    """``best - other`` in accuracy; a shadow arm and the control are compared paired, on
    the jobs both answered."""
    roles = (best.arm.role, other.arm.role)
    if roles == ("control", "shadow"):
        diff = difference(report, best, other)
        return diff.negated() if diff else None
    return difference(report, other, best)


def _inconclusive(report: Report) -> Verdict | None:
    cap = report.policy.max_feedback
    if cap is None or any(arm.judged < cap for arm in report.arms):
        return None
    return Verdict(
        "stopped",
        "inconclusive",
        f"every arm has {cap}+ judged jobs and none is significantly better than the others",
    )


def decide(report: Report) -> Verdict | None:
    """The verdict on a running experiment now, or None to keep it running."""
    return guard(report) or winner(report)


def apply(session: Session, report: Report, verdict: Verdict) -> str:
    """Carry out the verdict (promote when the policy says so) and record it; returns the
    decision recorded."""
    decision, reason, name = verdict.decision, verdict.reason, None
    if verdict.winner is not None:
        name = verdict.winner.arm.name
        if report.policy.action == "promote":
            change = promote(
                session,
                report.model,
                verdict.winner.arm.version,
                by=f"experiment {report.experiment.id}",
                reason=reason,
                during_experiment=True,
            )
            decision = "promoted" if change.changed else "kept"
            reason += (
                f"; promoted v{change.version}"
                if change.changed
                else f"; v{change.version} was already active"
            )
    finish(
        session,
        report.experiment.id,
        status=verdict.status,
        decision=decision,
        reason=reason,
        by=DECIDED_BY,
        winner=name,
    )
    return decision


def evaluate(session: Session, experiment_id: uuid.UUID) -> str | None:
    """Decide one experiment inside the caller's transaction; the decision made, or None."""
    experiment = lock_running(session, experiment_id)
    if experiment is None:  # ended meanwhile, or another scheduler holds it
        return None
    found = get_experiment(session, experiment_id)
    assert found is not None
    report = build_report(session, experiment, found[1])
    verdict = decide(report)
    if verdict is None:
        return None
    decision = apply(session, report, verdict)
    log.info(
        "experiment decided",
        extra={"experiment": str(experiment_id), "decision": decision, "reason": verdict.reason},
    )
    return decision


def evaluate_all(sessions: sessionmaker[Session]) -> dict[uuid.UUID, str]:
    """One pass over every running experiment, each in its own transaction."""
    with sessions() as session:
        ids = running_ids(session)
    decided = {}
    for experiment_id in ids:
        try:
            with sessions.begin() as session:
                decision = evaluate(session, experiment_id)
        except Exception:  # one broken experiment must not stop the others being judged
            log.exception("could not evaluate experiment", extra={"experiment": str(experiment_id)})
            continue
        if decision is not None:
            decided[experiment_id] = decision
    return decided


def judge_forever(
    sessions: sessionmaker[Session], interval_s: float, stop: threading.Event
) -> None:
    """Evaluate running experiments every ``interval_s`` until ``stop``."""
    while not stop.wait(interval_s):
        try:
            evaluate_all(sessions)
        except Exception:
            log.exception("experiment pass failed")
