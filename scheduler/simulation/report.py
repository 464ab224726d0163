"""What a run comes to: queue-wait percentiles against the SLO, workers, and the best fixed
fleet to compare worker-seconds with."""

from __future__ import annotations

import dataclasses

import numpy as np

from scheduler.simulation.model import Run, Scenario, Simulation
from scheduler.simulation.waits import percentile, share_within


@dataclasses.dataclass(frozen=True)
class Slo:
    """Queue wait: a share ``quantile`` of jobs start within ``seconds``."""

    seconds: float = 5.0
    quantile: float = 0.95

    def __str__(self) -> str:
        return f"p{self.quantile * 100:g} queue wait <= {self.seconds:g} s"


@dataclasses.dataclass(frozen=True)
class Summary:
    """One run in figures."""

    jobs: float
    p50_s: float
    p95_s: float
    p99_s: float
    at_slo_s: float
    within_slo: float
    meets_slo: bool
    worker_seconds: float
    peak_workers: int
    mean_workers: float

    def to_dict(self) -> dict[str, float | int | bool]:
        """JSON-ready."""
        return dataclasses.asdict(self)


def summarize(run: Run, slo: Slo) -> Summary:
    """Percentiles over every job of ``run`` (those still queued at the end count as
    waiting until then) and whether the SLO held."""
    lo, hi, n, _ = run.waits.arrays()
    at_slo = percentile(lo, hi, n, slo.quantile)
    workers = run.workers
    return Summary(
        jobs=float(n.sum()),
        p50_s=percentile(lo, hi, n, 0.5),
        p95_s=percentile(lo, hi, n, 0.95),
        p99_s=percentile(lo, hi, n, 0.99),
        at_slo_s=at_slo,
        within_slo=share_within(lo, hi, n, slo.seconds),
        meets_slo=at_slo <= slo.seconds,
        worker_seconds=run.worker_seconds,
        peak_workers=int(workers.max()) if len(workers) else 0,
        mean_workers=float(workers.mean()) if len(workers) else 0.0,
    )


def windowed(run: Run, q: float, window_s: float) -> tuple[np.ndarray, np.ndarray]:
    """``(window starts, the q-quantile of waits of the jobs served in each window)``."""
    lo, hi, n, at = run.waits.arrays()
    edges = np.arange(0.0, run.scenario.duration_s + window_s, window_s)
    slot = np.digitize(at, edges) - 1
    values = np.zeros(len(edges) - 1)
    for i in range(len(values)):
        mask = slot == i
        values[i] = percentile(lo[mask], hi[mask], n[mask], q) if mask.any() else np.nan
    return edges[:-1], values


def best_fixed_fleet(
    scenario: Scenario, slo: Slo, max_workers: int
) -> tuple[int | None, Run | None]:
    """The fewest always-ready workers that meet ``slo`` (bisection: more workers never wait
    longer), with its run; ``(None, None)`` when even ``max_workers`` miss it."""
    runs: dict[int, Run] = {}

    def meets(n: int) -> bool:
        runs[n] = Simulation(scenario, fixed=n).run()
        return summarize(runs[n], slo).meets_slo

    if not meets(max_workers):
        return None, None
    low, high = 0, max_workers  # low misses (or is zero), high meets
    while high - low > 1:
        mid = (low + high) // 2
        if meets(mid):
            high = mid
        else:
            low = mid
    return high, runs[high]
