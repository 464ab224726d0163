"""One ``inferq simulate`` run end to end: the autoscaled run, the best fixed fleet, the
write path, the picture, and the report as text and JSON."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

from scheduler.autoscaler.policy import Policy
from scheduler.simulation.model import Scenario, Simulation
from scheduler.simulation.plot import draw
from scheduler.simulation.report import Slo, best_fixed_fleet, summarize
from scheduler.simulation.writepath import Costs, table


def simulate(
    scenario: Scenario,
    policy: Policy,
    slo: Slo,
    costs: Costs,
    png: Path | None,
    search_fixed: bool = True,
) -> dict[str, Any]:
    """Run everything and return the report (the PNG written to ``png`` when given)."""
    began = time.perf_counter()
    run = Simulation(scenario, policy=policy).run()
    autoscaled = summarize(run, slo)
    elapsed = time.perf_counter() - began
    fixed_n, fixed_run = (
        best_fixed_fleet(scenario, slo, policy.max_workers) if search_fixed else (None, None)
    )
    fixed = summarize(fixed_run, slo) if fixed_run is not None else None
    report: dict[str, Any] = {
        "scenario": {
            **{k: v for k, v in dataclasses.asdict(scenario).items() if k != "curve"},
            "curve": scenario.curve.name,
            "curve_source": scenario.curve.source,
        },
        "policy": dataclasses.asdict(policy),
        "slo": str(slo),
        "autoscaled": autoscaled.to_dict() | {"decisions": run.decisions},
        "best_fixed_fleet": None if fixed is None else {"workers": fixed_n, **fixed.to_dict()},
        "worker_seconds_vs_fixed": (
            autoscaled.worker_seconds / fixed.worker_seconds if fixed else None
        ),
        "write_path": [row.to_dict() for row in table(run, costs)],
        "costs": dataclasses.asdict(costs),
        "seconds_to_simulate": round(elapsed, 2),
    }
    if png is not None:
        title = (
            f"{scenario.profile} profile, peak {scenario.peak:,.0f} jobs/s, curve "
            f"{scenario.curve.name}, {scenario.duration_s / 3600:g} h simulated"
        )
        report["png"] = str(draw(run, fixed_run, slo, costs, png, title))
    return report


def render(report: dict[str, Any]) -> str:
    """The report as a few lines of text."""
    a, f = report["autoscaled"], report["best_fixed_fleet"]
    lines = [
        f"SLO: {report['slo']}   (simulated in {report['seconds_to_simulate']} s)",
        _line("autoscaled", a),
        f"  decisions: {a['decisions']}",
    ]
    if f is None:
        lines.append("best fixed fleet: none within max_workers meets the SLO (or not searched)")
    else:
        lines.append(_line(f"best fixed fleet ({f['workers']} workers)", f))
        lines.append(f"worker-seconds, autoscaled / fixed: {report['worker_seconds_vs_fixed']:.3f}")
    lines.append("write path at the peak:")
    for row in report["write_path"]:
        saturates = row["saturates_at_jobs_s"]
        at = "" if saturates is None else f", saturates at {saturates:,.0f} jobs/s"
        capacity = "" if row["capacity"] is None else f" of {row['capacity']:,.0f}"
        lines.append(
            f"  {row['resource']}: {row['peak']:,.1f}{capacity} {row['unit']}{at} ({row['basis']})"
        )
    if "png" in report:
        lines.append(f"picture: {report['png']}")
    return "\n".join(lines)


def _line(name: str, s: dict[str, Any]) -> str:
    return (
        f"{name}: jobs {s['jobs']:,.0f}, queue wait p50/p95/p99 {s['p50_s']:.3f}/"
        f"{s['p95_s']:.3f}/{s['p99_s']:.3f} s, within SLO {s['within_slo']:.2%}, "
        f"{'MEETS' if s['meets_slo'] else 'MISSES'} the SLO; workers peak "
        f"{s['peak_workers']}, mean {s['mean_workers']:.1f}, worker-seconds "
        f"{s['worker_seconds']:,.0f}"
    )
