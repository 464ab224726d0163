"""inferq bench longpoll: the submits' p99 beside the long-polls against their p99 alone,
before and after (inferq.bench.longpoll.p99_ratio)."""

from __future__ import annotations

from typing import Any

import pytest

from inferq.bench.longpoll import p99_ratio


def run(p99: float | None) -> dict[str, Any]:
    return {"latency_ms": {"p99": p99}}


def test_the_baseline_is_the_mean_of_the_runs_before_and_after() -> None:
    # A machine that slowed between the first run alone and the run beside the long-polls:
    # against the first run alone only, the ratio would be 2.0
    assert p99_ratio(run(300.0), run(150.0), run(250.0)) == pytest.approx(1.5)


def test_a_run_alone_without_a_p99_leaves_the_other() -> None:
    assert p99_ratio(run(300.0), run(None), run(200.0)) == pytest.approx(1.5)
    assert p99_ratio(run(300.0), run(200.0), run(None)) == pytest.approx(1.5)


def test_no_ratio_without_submits_beside_or_alone() -> None:
    assert p99_ratio(run(None), run(100.0), run(100.0)) is None
    assert p99_ratio(run(300.0), run(None), run(None)) is None
