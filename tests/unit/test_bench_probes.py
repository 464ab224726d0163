"""inferq bench's CPU per job by kind of process (inferq.bench.probes)."""

from __future__ import annotations

import pytest

from inferq.bench.probes import Reading, by_kind, kind_of


@pytest.mark.parametrize(
    ("cmdline", "kind"),
    [
        ("/usr/bin/python3 -m inferq api --host 127.0.0.1 --port 39605", "api"),
        ("python3 -m inferq worker --name worker-1 --metrics-port 58597", "worker"),
        ("python3 -m inferq beat --metrics-port 38703", "scheduler"),
        ("postgres: 15/main: root inferq_bench_a 127.0.0.1(59832) idle", "postgres"),
        ("/usr/bin/redis-server 127.0.0.1:6379", "redis"),
        ("nginx: worker process", "nginx"),
        ("/usr/bin/python3 -m pytest tests/unit", None),
    ],
)
def test_a_process_is_told_by_its_command_line(cmdline: str, kind: str | None) -> None:
    assert kind_of(cmdline) == kind


def reading(processes: dict[int, tuple[str, float]]) -> Reading:
    return Reading(None, None, 0.0, 0.0, processes)


def test_cpu_per_job_is_what_each_kind_spent_during_the_run_divided_by_the_jobs() -> None:
    """Catches: CPU counted since each process started (not during the run), a replaced
    process's CPU counted twice, or a pid reused by another kind charged the old one's."""
    before = reading({1: ("api", 10.0), 2: ("api", 4.0), 3: ("worker", 7.0), 4: ("postgres", 9.0)})
    after = reading(
        {
            1: ("api", 11.5),  # 1.5 s during the run
            5: ("api", 0.5),  # started during the run (pid 2 was replaced): all of it
            3: ("worker", 7.5),
            4: ("redis", 0.25),  # the pid now names another process: all of its CPU
        }
    )
    assert by_kind(before, after, jobs=1000) == {"api": 2.0, "worker": 0.5, "redis": 0.25}
    # largest first
    assert list(by_kind(before, after, jobs=1000)) == ["api", "worker", "redis"]
