"""Where the write path saturates: Postgres commits and CPU, broker messages, Redis
commands and API CPU, from a run's per-tick jobs and batches at the per-op costs measured on
this project's machine (BENCHMARKS.md, FACTS.md). Capacities marked *assumed* were not
measured here; each is a flag of ``inferq simulate``."""

from __future__ import annotations

import dataclasses

import numpy as np

from scheduler.simulation.model import Run


@dataclasses.dataclass(frozen=True)
class Costs:
    """Per-job and per-batch costs (measured) and capacities (assumed unless noted)."""

    #: BENCHMARKS.md: the API's one INSERT + COMMIT per submit.
    api_commits_per_job: float = 1.0
    #: workers/runner.py: one claim and one store commit per batch.
    commits_per_batch: float = 2.0
    #: BENCHMARKS.md: Postgres CPU per job (1.23 commits per job, 10.8 jobs a batch).
    pg_cpu_s_per_job: float = 0.0007
    #: FACTS.md: one-row INSERT+COMMIT from one connection, 1,800/s: one WAL flush each.
    wal_flushes_per_s: float = 1800.0
    #: BENCHMARKS.md: Redis commands per job (result cache, status, signals, broker).
    redis_cmds_per_job: float = 6.3
    #: At most one publish per job (group publishing sends fewer) and one delivery.
    broker_msgs_per_job: float = 2.0
    #: BENCHMARKS.md: the API processes' CPU per job, and nginx's.
    api_cpu_s_per_job: float = 0.0026
    nginx_cpu_s_per_job: float = 0.00015
    #: Assumed: a Postgres primary's cores for the job path.
    pg_cores: float = 16.0
    #: Assumed: one Redis (one thread) with many clients, no pipelining.
    redis_cmds_per_s: float = 100_000.0
    #: Assumed: one RabbitMQ quorum queue, publisher confirms.
    rabbit_msgs_per_s: float = 20_000.0
    #: Assumed: an API node's cores, run at most this busy at the peak.
    api_node_cores: float = 4.0
    api_target_util: float = 0.6


@dataclasses.dataclass(frozen=True)
class Row:
    """One resource at the run's peak."""

    resource: str
    peak: float
    capacity: float
    unit: str
    saturates_at_jobs_s: float
    basis: str

    def to_dict(self) -> dict[str, object]:
        """JSON-ready (no limit: None)."""
        return {k: None if v == float("inf") else v for k, v in dataclasses.asdict(self).items()}


def smooth(values: np.ndarray, ticks: int) -> np.ndarray:
    """Moving mean over ``ticks`` ticks (the peaks a capacity has to carry)."""
    if ticks <= 1 or len(values) < ticks:
        return values
    return np.convolve(values, np.ones(ticks) / ticks, mode="same")


def rates(run: Run, costs: Costs, smooth_s: float = 10.0) -> dict[str, np.ndarray]:
    """Per-second series: jobs submitted, Postgres commits, Redis commands, broker messages."""
    dt = run.scenario.tick_s
    ticks = max(1, round(smooth_s / dt))
    jobs = smooth(run.series["arrivals"] / dt, ticks)
    batches = smooth(run.series["batches"] / dt, ticks)
    return {
        "jobs": jobs,
        "pg_commits": jobs * costs.api_commits_per_job + batches * costs.commits_per_batch,
        "redis_cmds": jobs * costs.redis_cmds_per_job,
        "broker_msgs": jobs * costs.broker_msgs_per_job,
    }


def table(run: Run, costs: Costs) -> list[Row]:
    """Each resource's peak demand, its capacity, and the jobs/s at which it saturates."""
    r = rates(run, costs)
    peak_jobs = float(r["jobs"].max())
    commits_per_job = float(r["pg_commits"].max()) / peak_jobs if peak_jobs else 0.0
    api_node = costs.api_node_cores * costs.api_target_util
    return [
        Row("Postgres commits/s", float(r["pg_commits"].max()), float("inf"), "commits/s",
            float("inf"), f"{commits_per_job:.2f} commits a job at the peak; at "
            f"{costs.wal_flushes_per_s:,.0f} WAL flushes/s (one connection, measured) group "
            f"commit puts {float(r['pg_commits'].max()) / costs.wal_flushes_per_s:.0f} "
            "commits in a flush"),
        Row("Postgres CPU", peak_jobs * costs.pg_cpu_s_per_job, costs.pg_cores, "cores",
            costs.pg_cores / costs.pg_cpu_s_per_job, "0.7 ms a job (measured), cores assumed"),
        Row("Redis commands/s", float(r["redis_cmds"].max()), costs.redis_cmds_per_s, "cmds/s",
            costs.redis_cmds_per_s / costs.redis_cmds_per_job,
            "6.3 a job (measured), one instance's rate assumed"),
        Row("RabbitMQ messages/s", float(r["broker_msgs"].max()), costs.rabbit_msgs_per_s,
            "msgs/s", costs.rabbit_msgs_per_s / costs.broker_msgs_per_job,
            "publish + delivery per job (upper bound), one quorum queue's rate assumed"),
        Row("API CPU (nodes needed)", peak_jobs * costs.api_cpu_s_per_job / api_node,
            float("inf"), "nodes", float("inf"),
            f"2.6 ms a job (measured), {costs.api_node_cores:g}-core nodes at "
            f"{costs.api_target_util:.0%}"),
    ]  # fmt: skip
