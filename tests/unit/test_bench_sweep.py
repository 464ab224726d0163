"""A sweep's levels, each against the first: issue 21's targets read off the report."""

from __future__ import annotations

from typing import Any

from inferq.cli.bench_cmds import against_first


def level(clients: int, jobs_s: float, p50: float | None) -> dict[str, Any]:
    return {"concurrency": clients, "throughput_jobs_s": jobs_s, "client_latency_ms": {"p50": p50}}


def test_each_level_after_the_first_says_its_jobs_s_and_p50_as_multiples_of_the_first() -> None:
    levels = against_first([level(1, 100.0, 9.0), level(8, 322.0, 23.3), level(64, 650.0, 90.0)])
    assert "against_first" not in levels[0]
    assert levels[1]["against_first"] == {"clients": 1, "throughput": 3.22, "p50": 2.59}
    assert levels[2]["against_first"] == {"clients": 1, "throughput": 6.5, "p50": 10.0}


def test_a_first_level_without_figures_gives_no_multiples() -> None:
    levels = against_first([level(1, 0.0, None), level(8, 300.0, 20.0)])
    assert levels[1]["against_first"] == {"clients": 1, "throughput": None, "p50": None}
    assert against_first([level(8, 300.0, 20.0)]) == [level(8, 300.0, 20.0)]
