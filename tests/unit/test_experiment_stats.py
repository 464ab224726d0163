"""The statistics, the assignment hash and the decision rules, without any service."""

from __future__ import annotations

import uuid
from collections import Counter
from typing import Any

import pytest

from db.tables import Experiment
from inferq.core.errors import InvalidInput
from inferq.domain.experiment_report import ArmReport, Report, compare
from inferq.domain.experiments import Arm, Policy, bucket, choose_arm, subject_of, weights_for
from inferq.domain.significance import (
    paired_proportions,
    two_proportions,
    wilson_interval,
    z_critical,
)
from scheduler.experiment_checks import decide


def test_critical_values_match_the_tables() -> None:
    assert z_critical(0.05) == pytest.approx(1.959964, abs=1e-6)
    assert z_critical(0.01) == pytest.approx(2.575829, abs=1e-6)


def test_two_proportions_matches_a_worked_example() -> None:
    # 90/100 against 75/100: pooled p = 0.825, z = 0.15 / sqrt(.825 * .175 * .02) = 2.7915
    diff = two_proportions((75, 100), (90, 100), alpha=0.05)
    assert diff is not None
    assert diff.difference == pytest.approx(0.15)
    assert diff.z == pytest.approx(2.7915, abs=1e-4)
    assert diff.p_value == pytest.approx(0.00525, abs=2e-5)
    assert diff.significant
    # unpooled interval: 0.15 ± 1.96 * sqrt(.9 * .1 / 100 + .75 * .25 / 100) = 0.15 ± 0.1032
    assert diff.ci == pytest.approx((0.0468, 0.2532), abs=1e-3)
    assert diff.negated().difference == pytest.approx(-0.15)
    assert diff.negated().ci == pytest.approx((-0.2532, -0.0468), abs=1e-3)


def test_small_or_equal_samples_are_not_significant() -> None:
    close = two_proportions((45, 50), (47, 50))
    assert close is not None and not close.significant
    same = two_proportions((50, 50), (50, 50))
    assert same is not None and same.p_value == 1.0 and not same.significant
    assert two_proportions((0, 0), (3, 10)) is None


def test_wilson_interval() -> None:
    low, high = wilson_interval(95, 100) or (0, 0)
    assert low == pytest.approx(0.8882, abs=1e-3) and high == pytest.approx(0.9785, abs=1e-3)
    assert wilson_interval(0, 0) is None
    assert wilson_interval(10, 10) == (pytest.approx(0.7225, abs=1e-3), 1.0)


def test_mcnemar_uses_only_the_discordant_pairs() -> None:
    # 200 paired jobs: only the baseline right on 5, only the treatment right on 25
    diff = paired_proportions(5, 25, 200)
    assert diff is not None
    assert diff.difference == pytest.approx(0.1)
    assert diff.z == pytest.approx(20 / 30**0.5)
    assert diff.significant and diff.ci[0] > 0
    assert not (paired_proportions(10, 12, 200) or diff).significant
    assert paired_proportions(0, 0, 0) is None


def test_the_same_subject_always_lands_in_the_same_arm_and_the_split_follows_weights() -> None:
    experiment = uuid.uuid4()
    arms = [arm("A", 1, 0.5), arm("B", 2, 0.5)]
    tenant = uuid.uuid4()
    subjects = [subject_of(tenant, f"user-{i}") for i in range(4000)]
    first = [choose_arm(experiment, arms, s).name for s in subjects]
    assert first == [choose_arm(experiment, arms, s).name for s in subjects]
    assert 0.46 < Counter(first)["A"] / 4000 < 0.54
    skewed = [arm("A", 1, 0.9), arm("B", 2, 0.1)]
    share = Counter(choose_arm(experiment, skewed, s).name for s in subjects)["B"] / 4000
    assert 0.08 < share < 0.12
    # another experiment reshuffles subjects independently
    other = uuid.uuid4()
    moved = sum(bucket(experiment, s) < 0.5 != (bucket(other, s) < 0.5) for s in subjects)
    assert 1700 < moved < 2300
    assert subject_of(tenant, None) != subject_of(tenant, "x")


@pytest.mark.parametrize(
    ("weights", "expected"),
    [
        ([None, None, None], [1 / 3] * 3),
        ([50, 50], [0.5, 0.5]),
        ([0.2, 0.8], [0.2, 0.8]),
        ([33.3333333, 66.6666667], [1 / 3, 2 / 3]),
    ],
)
def test_weights_sum_to_one_or_a_hundred(weights: list[Any], expected: list[float]) -> None:
    raw = [{"version": i + 1, "weight": w} for i, w in enumerate(weights)]
    assert weights_for("ab", raw) == pytest.approx(expected)


@pytest.mark.parametrize("weights", [[0.5, 0.4], [50, 49], [1, 1], [0.5, None]])
def test_weights_that_do_not_sum_up_are_refused(weights: list[Any]) -> None:
    with pytest.raises(InvalidInput):
        weights_for("ab", [{"version": i + 1, "weight": w} for i, w in enumerate(weights)])


def arm(name: str, version: int, weight: float | None, role: str = "treatment") -> Arm:
    return Arm(name, version, version + 100, "0" * 64, weight, role)


def report(
    arms: list[ArmReport],
    policy: Policy,
    mode: str = "ab",
    paired: dict[str, tuple[int, int, int]] | None = None,
) -> Report:
    row = Experiment(id=uuid.uuid4(), mode=mode, status="running", policy={}, arms=[])
    built = Report(row, "m", policy, arms, [], paired or {})
    return Report(row, "m", policy, arms, compare(built), paired or {})


def served(name: str, version: int, jobs: int, failed: int, judged: int, correct: int) -> ArmReport:
    role = "control" if name == "A" else "treatment"
    return ArmReport(
        arm(name, version, 0.5, role),
        jobs=jobs,
        succeeded=jobs - failed,
        failed=failed,
        judged=judged,
        correct=correct,
    )


def test_no_decision_before_enough_feedback() -> None:
    policy = Policy(min_feedback=100)
    assert (
        decide(report([served("A", 1, 99, 0, 99, 60), served("B", 2, 99, 0, 99, 98)], policy))
        is None
    )


def test_a_significantly_better_arm_wins() -> None:
    policy = Policy(min_feedback=100, alpha=0.01)
    verdict = decide(
        report([served("A", 1, 150, 0, 120, 80), served("B", 2, 150, 0, 120, 115)], policy)
    )
    assert verdict is not None and verdict.winner is not None
    assert (verdict.status, verdict.decision, verdict.winner.arm.name) == (
        "concluded",
        "winner",
        "B",
    )
    assert "arm B (v2) is significantly better" in verdict.reason and "p=" in verdict.reason


def test_a_close_race_keeps_running_until_max_feedback() -> None:
    arms = [served("A", 1, 300, 0, 300, 270), served("B", 2, 300, 0, 300, 275)]
    assert decide(report(arms, Policy(min_feedback=100))) is None
    verdict = decide(report(arms, Policy(min_feedback=100, max_feedback=300)))
    assert verdict is not None and verdict.decision == "inconclusive"
    assert verdict.status == "stopped" and verdict.winner is None


def test_the_guard_rail_stops_a_failing_arm_before_any_feedback() -> None:
    policy = Policy(guard_error_rate=0.2, guard_min_jobs=20)
    assert (
        decide(report([served("A", 1, 19, 0, 0, 0), served("B", 2, 19, 19, 0, 0)], policy)) is None
    )
    verdict = decide(report([served("A", 1, 40, 0, 0, 0), served("B", 2, 40, 10, 0, 0)], policy))
    assert verdict is not None and (verdict.status, verdict.decision) == ("stopped", "guard")
    assert "arm B (v2) failed 10 of 40" in verdict.reason


def test_a_shadow_arm_is_judged_paired_against_the_control() -> None:
    control = ArmReport(
        arm("A", 1, 1.0, "control"), jobs=200, succeeded=200, judged=200, correct=180
    )
    shadow = ArmReport(
        arm("B", 2, None, "shadow"), jobs=200, succeeded=200, judged=200, correct=196
    )
    policy = Policy(min_feedback=100)
    better = decide(report([control, shadow], policy, "shadow", {"B": (2, 18, 200)}))
    assert better is not None and better.winner is not None and better.winner.arm.name == "B"
    assert "McNemar" in better.reason
    worse = ArmReport(arm("B", 2, None, "shadow"), jobs=200, succeeded=200, judged=200, correct=150)
    kept = decide(report([control, worse], policy, "shadow", {"B": (35, 5, 200)}))
    assert kept is not None and kept.winner is not None and kept.winner.arm.name == "A"
