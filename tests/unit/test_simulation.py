"""``inferq simulate``: queue-wait percentiles, the SLO verdicts, that the real autoscaler
policy is what scales the simulated fleet, and the picture."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from inferq.cli import main
from scheduler.autoscaler import policy as autoscaling
from scheduler.autoscaler.policy import Policy
from scheduler.simulation.curves import CURVES
from scheduler.simulation.fluid import Pool
from scheduler.simulation.model import Scenario, Simulation
from scheduler.simulation.plot import draw
from scheduler.simulation.report import Slo, best_fixed_fleet, summarize
from scheduler.simulation.waits import WaitLog, percentile, share_within
from scheduler.simulation.writepath import Costs

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SLO = Slo(seconds=5.0, quantile=0.95)
#: A day's diurnal curve in ten minutes, from 400 jobs/s to 1,000 and back: one embed-cpu
#: worker finishes about 204 jobs/s at best, so five workers keep up at the peak and four
#: fall behind; an autoscaled pool starts with two.
DAY = Scenario(
    CURVES["embed-cpu"], profile="diurnal", duration_s=600, peak=1000, cold_start_s=5, drain_s=2
)
AUTOSCALED = Policy(min_workers=1, max_workers=20, target_queue_wait_s=2, max_step=10)


def arrays(log: WaitLog) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    lo, hi, n, _ = log.arrays()
    return lo, hi, n


def test_percentiles_of_a_hand_made_set_of_waits() -> None:
    # Given 50 jobs that waited 0.1 s, 40 that waited 1 s and 10 that waited 10 s
    log = WaitLog()
    log.add(0.1, 0.1, 50, at=0)
    log.add(1.0, 1.0, 40, at=0)
    log.add(10.0, 10.0, 10, at=0)
    lo, hi, n = arrays(log)
    # Then half waited 0.1 s or less, 90% at most 1 s, and the last tenth 10 s
    assert percentile(lo, hi, n, 0.5) == pytest.approx(0.1, abs=1e-6)
    assert percentile(lo, hi, n, 0.9) == pytest.approx(1.0, abs=1e-6)
    assert percentile(lo, hi, n, 0.95) == pytest.approx(10.0, abs=1e-6)
    assert share_within(lo, hi, n, 5.0) == pytest.approx(0.9)


def test_percentiles_of_waits_spread_evenly() -> None:
    # Given 1,000 jobs whose waits run evenly from 0 to 10 s (given high to low, as a
    # queue that is catching up serves them)
    log = WaitLog()
    log.add(10.0, 0.0, 1000, at=0)
    lo, hi, n = arrays(log)
    assert percentile(lo, hi, n, 0.5) == pytest.approx(5.0, abs=1e-6)
    assert percentile(lo, hi, n, 0.99) == pytest.approx(9.9, abs=1e-6)
    assert share_within(lo, hi, n, 2.5) == pytest.approx(0.25)


def test_a_pool_that_keeps_up_queues_nothing_and_one_without_workers_counts_every_wait() -> None:
    curve = CURVES["embed-cpu"]
    sizes = np.arange(1, 65)
    # Given 100 jobs in a second and 2 workers (each over 200 jobs/s at their best)
    keeping_up = Pool(curve.throughputs(64), curve.latency(sizes), WaitLog())
    done = keeping_up.tick(0.0, 1.0, 100.0, n=2)
    assert done.jobs == pytest.approx(100.0) and keeping_up.queued == 0
    # Given the same jobs and no worker for 10 s: all wait, from 10 s down to 9 s
    idle = Pool(curve.throughputs(64), curve.latency(sizes), WaitLog())
    assert idle.tick(0.0, 1.0, 100.0, n=0).jobs == 0
    idle.close(10.0)
    lo, hi, n = arrays(idle.waits)
    assert n.sum() == 100 and lo.min() == pytest.approx(9.0) and hi.max() == pytest.approx(10.0)


def test_a_fleet_too_small_misses_the_slo_and_the_autoscaled_one_meets_it() -> None:
    too_small = summarize(Simulation(DAY, fixed=4).run(), SLO)
    autoscaled = summarize(Simulation(DAY, policy=AUTOSCALED).run(), SLO)
    assert not too_small.meets_slo and too_small.p95_s > SLO.seconds
    assert autoscaled.meets_slo and autoscaled.p95_s <= SLO.seconds
    assert autoscaled.jobs == pytest.approx(DAY.arrivals().sum())
    assert autoscaled.peak_workers >= 5 and autoscaled.worker_seconds < 5 * 600


def test_jobs_still_queued_at_the_end_count_as_waiting_until_then() -> None:
    # Given 1,000 jobs/s for ten minutes and four workers (about 814 jobs/s)
    flat = dataclasses.replace(DAY, profile="flat")
    behind = summarize(Simulation(flat, fixed=4).run(), SLO)
    # Then every job is counted, and the backlog left at the end is the worst of the waits
    assert behind.jobs == pytest.approx(flat.arrivals().sum())
    assert behind.p99_s > 60


def test_the_best_fixed_fleet_is_the_smallest_that_meets_the_slo() -> None:
    workers, run = best_fixed_fleet(DAY, SLO, max_workers=20)
    assert workers == 5 and run is not None and run.worker_seconds == 5 * 600
    assert not summarize(Simulation(DAY, fixed=4).run(), SLO).meets_slo
    assert best_fixed_fleet(DAY, SLO, max_workers=3) == (None, None)


def test_the_real_policy_decides(monkeypatch: pytest.MonkeyPatch) -> None:
    """Catches: a simulation that scales by a policy of its own, not the autoscaler's."""
    calls = []
    real = autoscaling.decide

    def frozen(policy, obs, memory, now):  # type: ignore[no-untyped-def]
        calls.append(obs)
        decision = real(policy, obs, memory, now)
        return type(decision)(obs.current, decision.recommended, obs.current, "frozen",
                              decision.memory)  # fmt: skip

    # Given the policy swapped for one that never changes the fleet
    monkeypatch.setattr(autoscaling, "decide", frozen)
    run = Simulation(DAY, policy=AUTOSCALED).run()
    # Then the simulation called it every poll and stayed at its two workers, missing the SLO
    assert len(calls) == 600 // 5 - 1
    assert run.workers.max() == 2
    assert not summarize(run, SLO).meets_slo


def test_the_picture_is_a_png(tmp_path: Path) -> None:
    run = Simulation(DAY, policy=AUTOSCALED).run()
    path = draw(run, None, SLO, Costs(), tmp_path / "sim.png", "diurnal")
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 10_000
    import matplotlib.pyplot as plt

    assert plt.imread(path).shape[2] in (3, 4)  # decodes as an image


def test_the_command_reports_the_slo_the_fixed_fleet_and_the_write_path(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        main,
        ["simulate", "--profile", "diurnal", "--duration", "600", "--peak", "1000",
         "--curve", "embed-cpu", "--max-workers", "20", "--target-wait", "2", "--max-step",
         "10", "--cold-start", "5", "--drain", "2", "--png", str(tmp_path / "s.png"),
         "--json", str(tmp_path / "s.json")],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "s.json").read_text())
    assert report["autoscaled"]["meets_slo"] is True
    assert report["best_fixed_fleet"]["workers"] == 5
    assert "MEETS the SLO" in result.output and "Postgres" in result.output
    assert (tmp_path / "s.png").read_bytes()[:8] == PNG_MAGIC


def test_the_day_profile_peaks_at_ten_times_its_afternoon_in_the_burst() -> None:
    from scheduler.simulation import profiles

    peak = 10_000.0
    afternoon = profiles.rate("day", 15.5 * 3600, profiles.DAY_S, peak)
    assert profiles.rate("day", 16 * 3600 + 450, profiles.DAY_S, peak) == pytest.approx(
        peak, rel=1e-3
    )
    assert afternoon == pytest.approx(peak / 10, rel=0.05)
    assert profiles.rate("day", 4 * 3600, profiles.DAY_S, peak) == pytest.approx(peak / 50)


def test_the_write_path_counts_a_commit_per_submit_and_two_per_batch() -> None:
    from scheduler.simulation.writepath import rates, table

    run = Simulation(DAY, fixed=5).run()
    per_s = rates(run, Costs(), smooth_s=1.0)
    expected = run.series["arrivals"] + 2 * run.series["batches"]
    assert np.allclose(per_s["pg_commits"], expected)
    redis = next(row for row in table(run, Costs()) if row.resource.startswith("Redis"))
    assert redis.saturates_at_jobs_s == pytest.approx(100_000 / 6.3)


def test_a_burst_past_five_hundred_gpu_workers_takes_the_fleet_to_the_cap_and_no_further() -> None:
    """SCALING.md's 500-GPU-worker run, in small. Catches: a fleet that stops short of
    ``max_workers`` under a burst that needs more, or one that passes it (tried: the
    policy's two clamps to ``max_workers`` in scheduler/autoscaler/policy.py removed: 968)."""
    # Given an hour whose burst needs about 670 unbatched GPU workers (100,000 jobs/s at
    # 150 jobs/s a worker), around a baseline a few dozen serve
    burst = Scenario(
        CURVES["embed-gpu"], profile="burst", duration_s=3600, peak=100_000, max_batch=1
    )
    for cap in (500, 300):
        policy = Policy(min_workers=1, max_workers=cap, target_queue_wait_s=5, max_step=50)

        # When the real policy scales the fleet
        run = Simulation(burst, policy=policy).run()

        # Then it starts small, reaches the cap in the burst, and never passes it
        assert run.workers[0] < 100
        assert run.workers.max() == cap
        assert run.series["ready"].max() == cap
