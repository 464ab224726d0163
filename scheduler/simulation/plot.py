"""The picture of a run: traffic, workers, queue wait against the SLO, the write path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only: no display on servers and CI

import matplotlib.pyplot as plt
import numpy as np

from scheduler.simulation import profiles
from scheduler.simulation.model import Run
from scheduler.simulation.report import Slo, windowed
from scheduler.simulation.writepath import Costs, rates


def _hours(run: Run, values: np.ndarray) -> np.ndarray:
    return np.arange(len(values)) * run.scenario.tick_s / 3600.0


def draw(run: Run, fixed: Run | None, slo: Slo, costs: Costs, path: Path, title: str) -> Path:
    """Write a four-panel PNG of ``run`` (and the best fixed fleet, when found) to ``path``."""
    fig, axes = plt.subplots(5, 1, figsize=(11, 15), constrained_layout=True)
    per_s = rates(run, costs)
    hours = _hours(run, per_s["jobs"])
    traffic, workers, waits, writes, zoom = axes
    for ax in axes[1:4]:
        ax.sharex(traffic)
    traffic.plot(hours, per_s["jobs"], color="tab:blue", lw=0.8, label="arrivals")
    served = run.series["served"] / run.scenario.tick_s
    traffic.plot(hours, served, color="tab:green", lw=0.5, alpha=0.6, label="served")
    traffic.set_ylabel("jobs/s")
    traffic.legend(loc="upper left")
    traffic.set_title(title)

    workers.plot(hours, run.workers, color="tab:orange", lw=0.9, label="autoscaled (paid)")
    workers.plot(hours, run.series["ready"], color="tab:red", lw=0.5, label="serving")
    if fixed is not None and fixed.fixed is not None:
        label = f"best fixed fleet: {fixed.fixed}"
        workers.axhline(fixed.fixed, color="grey", ls="--", label=label)
    workers.set_ylabel("workers")
    workers.legend(loc="upper left")

    window = max(60.0, run.scenario.duration_s / 288)
    for q, color in ((0.5, "tab:green"), (slo.quantile, "tab:orange"), (0.99, "tab:red")):
        starts, values = windowed(run, q, window)
        waits.plot(starts / 3600.0, np.maximum(values, 1e-4), color=color, lw=0.9,
                   label=f"p{q * 100:g} per {window / 60:g} min")  # fmt: skip
    waits.axhline(slo.seconds, color="black", ls=":", label=f"SLO: {slo}")
    waits.set_yscale("log")
    waits.set_ylabel("queue wait, s")
    waits.legend(loc="upper left", fontsize=8)

    for key, color, label, capacity, what in (
        ("pg_commits", "tab:purple", "Postgres commits/s", costs.wal_flushes_per_s,
         "WAL flushes/s, one connection (measured)"),
        ("redis_cmds", "tab:brown", "Redis commands/s", costs.redis_cmds_per_s,
         "one Redis (assumed)"),
        ("broker_msgs", "tab:cyan", "RabbitMQ messages/s", costs.rabbit_msgs_per_s,
         "one quorum queue (assumed)"),
    ):  # fmt: skip
        writes.plot(hours, per_s[key], color=color, lw=0.8, label=label)
        writes.axhline(capacity, color=color, ls=":", lw=0.8, label=what)
    writes.set_yscale("log")
    writes.set_ylabel("per second")
    writes.set_xlabel("simulated hours")
    writes.legend(loc="upper left", fontsize=8)
    _zoom(zoom, run, fixed, slo)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


def _zoom(ax: plt.Axes, run: Run, fixed: Run | None, slo: Slo) -> None:
    """The burst up close (the whole run when the profile has none): workers against
    arrivals, and the worst queue wait of each tick."""
    sc = run.scenario
    stretch = sc.duration_s / profiles.DAY_S
    if sc.profile in ("day", "burst"):
        start, stop = (profiles.BURST_AT_S - 900) * stretch, (profiles.BURST_AT_S + 2700) * stretch
    else:
        start, stop = 0.0, sc.duration_s
    times = run.times
    shown = (times >= start) & (times < stop)
    minutes = (times[shown] - start) / 60.0
    ax.plot(minutes, run.workers[shown], color="tab:orange", lw=1.0, label="workers (paid)")
    ax.plot(minutes, run.series["ready"][shown], color="tab:red", lw=0.7, label="serving")
    if fixed is not None and fixed.fixed is not None:
        ax.axhline(fixed.fixed, color="grey", ls="--", lw=0.8, label="best fixed fleet")
    ax.set_ylabel("workers")
    ax.set_xlabel(f"minutes from {start / 3600:.2f} h")
    queued = ax.twinx()
    queued.plot(minutes, run.series["queued"][shown], color="tab:blue", lw=0.8, label="queued jobs")
    queued.set_ylabel("queued jobs")
    lines = ax.get_legend_handles_labels()
    more = queued.get_legend_handles_labels()
    ax.legend(lines[0] + more[0], lines[1] + more[1], loc="upper right", fontsize=8)
    ax.set_title("the burst, up close" if sc.profile in ("day", "burst") else "the run")
