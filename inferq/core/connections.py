"""The connection budget: how many Postgres connections each process may open, and their sum.

Every engine inferq keeps for a process's life is sized by :func:`pool` (API processes,
workers of every lane, the scheduler, the autoscaler), so the sum :func:`budget` gives for a
fleet is what Postgres (or PgBouncer, in front of it) must accept when every pool is full.
One-off connections (``inferq db upgrade``, CLI commands, healthchecks) come and go and are
not counted. docs/connections.md has the table this module computes.
"""

from __future__ import annotations

import dataclasses
import math

from inferq.core.settings import Settings

#: Why an API process's pool never overflows (``INFERQ_DB_OVERFLOW`` sizes the others): its
#: requests are greenlets, so those beyond the pool queue for a connection at the cost of a
#: wait, while an overflow connection is opened for a moment of load and closed on its return
#: (SQLAlchemy keeps only ``pool_size``): a Postgres backend forked, authenticated and torn
#: down for a few statements. Under 64 clients that churn was a quarter of all the CPU: 363
#: jobs/s with overflow, 481 without, at the same pool of 18 (BENCHMARKS.md).
API_OVERFLOW = 0

#: The processes that keep a pool, by the name :func:`pool` takes.
ROLES = ("api", "worker", "scheduler", "autoscaler")


@dataclasses.dataclass(frozen=True)
class Pool:
    """One process's pool: ``size`` connections kept, ``overflow`` more opened under load."""

    size: int
    overflow: int

    @property
    def most(self) -> int:
        """The most connections the process may hold at once."""
        return self.size + self.overflow


def pool(settings: Settings, role: str) -> Pool:
    """The pool one process of ``role`` (one of :data:`ROLES`) opens."""
    database = settings.database
    sizes = {
        "api": database.api_db_pool,
        "worker": database.worker_db_pool,
        "scheduler": database.scheduler_db_pool,
        "autoscaler": database.autoscaler_db_pool,
    }
    size = sizes[role]
    if role == "api":
        return Pool(size, API_OVERFLOW)
    return Pool(size, math.ceil(size * database.db_overflow))


@dataclasses.dataclass(frozen=True)
class Fleet:
    """How many of each process run (across every host)."""

    api_nodes: int = 1
    #: Workers of the online lane (with an autoscaler, the most it starts).
    workers: int = 1
    batch_workers: int = 1
    trainers: int = 1
    webhook_workers: int = 1
    schedulers: int = 1
    autoscalers: int = 0

    @classmethod
    def local(cls, settings: Settings) -> Fleet:
        """What ``inferq up`` runs with these settings."""
        local = settings.local
        bounds = local.autoscale_bounds
        return cls(
            api_nodes=local.api_nodes,
            workers=local.workers if bounds is None else bounds[1],
            batch_workers=local.batch_workers,
            autoscalers=0 if bounds is None else 1,
        )


@dataclasses.dataclass(frozen=True)
class Line:
    """One kind of process in the budget: ``processes`` of them, each with ``pool``."""

    name: str
    processes: int
    pool: Pool

    @property
    def connections(self) -> int:
        """The most connections these processes hold together."""
        return self.processes * self.pool.most


def budget(settings: Settings, fleet: Fleet) -> list[Line]:
    """Each kind of process of ``fleet`` with its pool; their sum is :func:`total`."""
    api_processes = fleet.api_nodes * settings.api.api_processes
    worker = pool(settings, "worker")
    lines = [
        Line("API processes", api_processes, pool(settings, "api")),
        Line("workers (online)", fleet.workers, worker),
        Line("workers (batch)", fleet.batch_workers, worker),
        Line("trainers", fleet.trainers, worker),
        Line("webhook workers", fleet.webhook_workers, worker),
        Line("scheduler", fleet.schedulers, pool(settings, "scheduler")),
        Line("autoscaler", fleet.autoscalers, pool(settings, "autoscaler")),
    ]
    return [line for line in lines if line.processes]


def total(lines: list[Line]) -> int:
    """The most Postgres connections the processes of ``lines`` hold at once."""
    return sum(line.connections for line in lines)


def summary(lines: list[Line]) -> str:
    """One line: the total and where it comes from (``inferq up``'s banner)."""
    parts = ", ".join(f"{line.name} {line.processes}×{line.pool.most}" for line in lines)
    return f"{total(lines)} at most ({parts})"


def table(lines: list[Line]) -> str:
    """The budget as a Markdown table, with its total."""
    rows = [
        "| processes | count | pool | overflow | each | connections |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for line in lines:
        p = line.pool
        rows.append(
            f"| {line.name} | {line.processes} | {p.size} | {p.overflow} | {p.most} "
            f"| {line.connections} |"
        )
    rows.append(f"| **total** | | | | | **{total(lines)}** |")
    return "\n".join(rows)
