"""``inferq simulate``: a day of traffic against the real autoscaler policy (see SCALING.md)."""

from __future__ import annotations

import json
from pathlib import Path

import click

from inferq.cli.common import reports_errors
from inferq.core.settings import AutoscalerSettings

#: The policy's flags default to the ``INFERQ_AUTOSCALER_*`` settings' defaults (never a
#: copy of them); only ``--max-workers`` is the simulation's own, a fleet for its peak.
AUTOSCALER = AutoscalerSettings()

PROFILES = ["day", "diurnal", "burst", "flat"]
CURVES = ["embed-cpu", "embed-gpu", "digits-cpu"]


@click.command()
@click.option(
    "--profile",
    type=click.Choice(PROFILES),
    default="day",
    show_default=True,
    help="Arrivals: day = diurnal with a 10x burst to the peak at 16:00.",
)
@click.option(
    "--duration",
    type=float,
    default=86_400.0,
    show_default=True,
    help="Simulated seconds; the profile's day is stretched over them.",
)
@click.option("--peak", type=float, default=10_000.0, show_default=True, help="Peak jobs/s.")
@click.option(
    "--scale",
    type=float,
    default=1.0,
    show_default=True,
    help="Multiplies the peak (0.01: a hundredth of the traffic).",
)
@click.option(
    "--curve",
    type=click.Choice(CURVES),
    default="embed-cpu",
    show_default=True,
    help="Batch size -> seconds per batch for one worker.",
)
@click.option("--max-batch", type=int, default=None, help="Default: the curve's.")
@click.option(
    "--cold-start",
    type=float,
    default=30.0,
    show_default=True,
    help="Seconds from a worker's start to its first batch.",
)
@click.option(
    "--drain",
    type=float,
    default=10.0,
    show_default=True,
    help="Seconds a stopped worker is still paid for.",
)
@click.option("--tick", type=float, default=1.0, show_default=True, help="Simulation step, s.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option(
    "--min-workers", type=int, default=AUTOSCALER.autoscaler_min_workers, show_default=True
)
@click.option("--max-workers", type=int, default=500, show_default=True)
@click.option(
    "--target-wait", type=float, default=AUTOSCALER.autoscaler_target_wait_s, show_default=True
)
@click.option("--max-step", type=int, default=AUTOSCALER.autoscaler_max_step, show_default=True)
@click.option("--poll", type=float, default=AUTOSCALER.autoscaler_poll_s, show_default=True)
@click.option("--window", type=float, default=AUTOSCALER.autoscaler_window_s, show_default=True)
@click.option(
    "--stabilization", type=float, default=AUTOSCALER.autoscaler_stabilization_s, show_default=True
)
@click.option("--cooldown", type=float, default=AUTOSCALER.autoscaler_cooldown_s, show_default=True)
@click.option(
    "--slo",
    "slo_s",
    type=float,
    default=5.0,
    show_default=True,
    help="Queue-wait SLO, seconds (the Prometheus alert's 5 s p95).",
)
@click.option("--slo-quantile", type=float, default=0.95, show_default=True)
@click.option(
    "--fixed-search/--no-fixed-search",
    default=True,
    show_default=True,
    help="Find the smallest fixed fleet that meets the SLO (a run per probe).",
)
@click.option("--pg-cores", type=float, default=16.0, show_default=True)
@click.option(
    "--redis-rate",
    type=float,
    default=100_000.0,
    show_default=True,
    help="Commands/s one Redis serves (assumed).",
)
@click.option(
    "--rabbit-rate",
    type=float,
    default=20_000.0,
    show_default=True,
    help="Messages/s one RabbitMQ quorum queue serves (assumed).",
)
@click.option(
    "--png", type=click.Path(path_type=Path), default=Path("simulation.png"), show_default=True
)
@click.option(
    "--json",
    "json_path",
    type=click.Path(path_type=Path),
    default=None,
    help="Also write the report as JSON here.",
)
@reports_errors
def simulate(profile: str, duration: float, peak: float, scale: float, curve: str,
             max_batch: int | None, cold_start: float, drain: float, tick: float, seed: int,
             min_workers: int, max_workers: int, target_wait: float, max_step: int,
             poll: float, window: float, stabilization: float, cooldown: float, slo_s: float,
             slo_quantile: float, fixed_search: bool, pg_cores: float, redis_rate: float,
             rabbit_rate: float, png: Path, json_path: Path | None) -> None:  # fmt: skip
    """Simulate a pool of workers under the real autoscaler policy (discrete events, SimPy).

    Reports queue-wait percentiles against the SLO, workers over time, worker-seconds
    against the best fixed fleet, and the write path's load at the peak; draws a PNG.
    """
    from scheduler.autoscaler.policy import Policy
    from scheduler.simulation.curves import CURVES as BY_NAME
    from scheduler.simulation.model import Scenario
    from scheduler.simulation.report import Slo
    from scheduler.simulation.study import render
    from scheduler.simulation.study import simulate as run_simulation
    from scheduler.simulation.writepath import Costs

    try:
        scenario = Scenario(
            BY_NAME[curve], profile=profile, duration_s=duration, peak=peak * scale,
            max_batch=max_batch, cold_start_s=cold_start, drain_s=drain, tick_s=tick,
            poll_s=poll, window_s=window, seed=seed,
        )  # fmt: skip
        policy = Policy(
            min_workers=min_workers, max_workers=max_workers, target_queue_wait_s=target_wait,
            max_step=max_step, stabilization_s=stabilization, cooldown_s=cooldown,
        )  # fmt: skip
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from exc
    if not 0 < slo_quantile < 1:
        raise click.BadParameter("--slo-quantile must be between 0 and 1")
    costs = Costs(pg_cores=pg_cores, redis_cmds_per_s=redis_rate, rabbit_msgs_per_s=rabbit_rate)
    report = run_simulation(scenario, policy, Slo(slo_s, slo_quantile), costs, png, fixed_search)
    click.echo(render(report))
    if json_path is not None:
        json_path.write_text(json.dumps(report, indent=2, default=str) + "\n")


COMMANDS = [simulate]
