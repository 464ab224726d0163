"""What a run cost: Postgres commits, Redis commands and CPU time, as before/after deltas;
the CPU time also per kind of process on this host (API, worker, Postgres, ...), so that a
run says which process a job's CPU went to."""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import psutil
import redis
from sqlalchemy import create_engine, text


@dataclasses.dataclass(frozen=True)
class Reading:
    """Counters at one moment."""

    pg_commits: int | None
    redis_commands: int | None
    cpu_busy_s: float
    bench_cpu_s: float
    #: Each process of a known kind on this host: pid -> (kind, CPU seconds so far).
    processes: dict[int, tuple[str, float]] = dataclasses.field(default_factory=dict)


#: The kinds of process a job's CPU is told apart by, each named by what its command line
#: holds; the first that matches wins.
KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("api", ("inferq api",)),
    ("worker", ("inferq worker",)),
    ("scheduler", ("inferq beat", "inferq autoscaler")),
    ("postgres", ("postgres", "pgbouncer")),
    ("redis", ("redis-server",)),
    ("rabbitmq", ("rabbitmq", "beam.smp")),
    ("nginx", ("nginx",)),
)


def kind_of(cmdline: str) -> str | None:
    """The kind of a process by its command line (arguments joined by spaces), or None."""
    for kind, marks in KINDS:
        if any(mark in cmdline for mark in marks):
            return kind
    return None


def _processes() -> dict[int, tuple[str, float]]:
    own = psutil.Process().pid
    found: dict[int, tuple[str, float]] = {}
    for proc in psutil.process_iter(["cmdline", "cpu_times"]):
        try:
            kind = kind_of(" ".join(proc.info["cmdline"] or ()))
            times = proc.info["cpu_times"]
        except (psutil.Error, TypeError):
            continue
        if kind is not None and proc.pid != own and times is not None:
            found[proc.pid] = (kind, times.user + times.system)
    return found


def _pg_commits(database_url: str | None) -> int | None:
    if not database_url:
        return None
    engine = create_engine(database_url, pool_size=1)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT pg_stat_clear_snapshot()"))
            commits = conn.scalar(
                text("SELECT xact_commit FROM pg_stat_database WHERE datname = current_database()")
            )
            return int(commits or 0)
    finally:
        engine.dispose()


def _redis_commands(redis_url: str | None) -> int | None:
    if not redis_url:
        return None
    client = redis.Redis.from_url(redis_url)
    try:
        stats = client.info("commandstats")
        return sum(int(v["calls"]) for v in stats.values())
    finally:
        client.close()


def _busy(times: Any) -> float:
    return float(
        times.user
        + times.system
        + getattr(times, "nice", 0)
        + getattr(times, "irq", 0)
        + getattr(times, "softirq", 0)
    )


def read(database_url: str | None, redis_url: str | None, *, settle_s: float = 0.0) -> Reading:
    """Read the counters (after ``settle_s``: Postgres publishes its stats about once a second)."""
    time.sleep(settle_s)
    own = psutil.Process().cpu_times()
    return Reading(
        pg_commits=_pg_commits(database_url),
        redis_commands=_redis_commands(redis_url),
        cpu_busy_s=_busy(psutil.cpu_times()),
        bench_cpu_s=own.user + own.system,
        processes=_processes(),
    )


def per_job(before: Reading, after: Reading, jobs: int) -> dict[str, Any]:
    """The deltas divided by ``jobs`` (the probe's own commit and commands are negligible)."""
    jobs = max(jobs, 1)

    def delta(a: int | None, b: int | None) -> float | None:
        return None if a is None or b is None else round((b - a) / jobs, 4)

    bench_cpu = after.bench_cpu_s - before.bench_cpu_s
    return {
        "postgres_commits_per_job": delta(before.pg_commits, after.pg_commits),
        "redis_commands_per_job": delta(before.redis_commands, after.redis_commands),
        "cpu_s_per_job_services": round(
            (after.cpu_busy_s - before.cpu_busy_s - bench_cpu) / jobs, 6
        ),
        "cpu_s_per_job_bench_client": round(bench_cpu / jobs, 6),
        "cpu_ms_per_job_by_process": by_kind(before, after, jobs),
    }


def by_kind(before: Reading, after: Reading, jobs: int) -> dict[str, float]:
    """Milliseconds of CPU per job for each kind of process on this host, largest first.

    A process that started during the run counts all its CPU; one that ended during it (a
    gunicorn worker replaced) counts none of its own, so a kind may read low, never high."""
    spent: dict[str, float] = {}
    for pid, (kind, cpu) in after.processes.items():
        was = before.processes.get(pid)
        used = cpu - was[1] if was is not None and was[0] == kind else cpu
        spent[kind] = spent.get(kind, 0.0) + max(0.0, used)
    per_job = {kind: round(cpu * 1000 / max(jobs, 1), 3) for kind, cpu in spent.items()}
    return dict(sorted(per_job.items(), key=lambda item: -item[1]))
