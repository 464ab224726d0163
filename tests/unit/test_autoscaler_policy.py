"""The scaling policy as a pure function over observations: bursts, flapping, zero, max."""

from __future__ import annotations

import itertools

import pytest

from inferq.core.settings import AutoscalerSettings
from scheduler.autoscaler.policy import Memory, Observation, Policy, decide, recommend

POLICY = Policy(
    min_workers=1,
    max_workers=8,
    target_queue_wait_s=10.0,
    max_step=4,
    stabilization_s=30.0,
    cooldown_s=10.0,
)


def obs(backlog: int, current: int, arrival: float = 0.0, running: int = 0) -> Observation:
    return Observation(backlog, running, arrival, service_rate=2.0, current=current)


def run(policy: Policy, steps: list[tuple[float, Observation]]) -> list[int]:
    """Decisions over time, each observation's ``current`` replaced by the last decision."""
    memory, current, out = Memory(), steps[0][1].current, []
    for now, o in steps:
        d = decide(
            policy,
            Observation(o.backlog, o.running, o.arrival_rate, o.service_rate, current),
            memory,
            now,
        )
        memory, current = d.memory, d.desired
        out.append(d.desired)
    return out


def test_recommendation_drains_the_backlog_within_the_target_and_keeps_up_with_arrivals() -> None:
    # 100 waiting / 10 s target = 10 jobs/s, plus 4/s arriving, at 2/s per worker: 7 workers
    assert recommend(POLICY, obs(backlog=100, current=1, arrival=4.0)) == 7
    assert recommend(POLICY, obs(backlog=0, current=1)) == 1  # min_workers
    assert recommend(POLICY, obs(backlog=10_000, current=1)) == 8  # max_workers


def test_a_burst_scales_up_at_once_by_at_most_max_step() -> None:
    d = decide(POLICY, obs(backlog=200, current=1), Memory(), now=0.0)
    assert (d.recommended, d.desired, d.direction) == (8, 5, "up")
    again = decide(POLICY, obs(backlog=200, current=5), d.memory, now=1.0)
    assert again.desired == 8  # no cooldown on the way up


def test_scale_down_waits_for_the_stabilisation_window_then_steps_down() -> None:
    steps = [(0.0, obs(200, 1))] + [(t, obs(0, 5)) for t in (1.0, 5.0, 20.0, 29.0, 31.0, 40.0)]
    desired = run(POLICY, steps)
    # up to 5 then 8 while the burst is seen; back down only after 30 s without need
    assert desired[0] == 5
    assert desired[1:5] == [5, 5, 5, 5]
    assert desired[5] == 1
    assert decide(POLICY, obs(0, 5), Memory(), now=0.0).direction == "hold"  # nothing seen yet


def test_flapping_load_does_not_flap_the_workers() -> None:
    # a burst every 8 s, idle between: the window keeps the highest recent need
    steps = [(float(t), obs(60 if t % 8 == 0 else 0, 1)) for t in range(0, 64)]
    desired = run(POLICY, steps)
    changes = sum(1 for a, b in itertools.pairwise(desired) if a != b)
    assert desired[0] == 3 and changes == 0  # up once at the first burst, then held


def test_cooldown_holds_a_scale_down_right_after_a_change() -> None:
    policy = Policy(
        min_workers=0, max_workers=8, stabilization_s=5.0, cooldown_s=20.0, target_queue_wait_s=10.0
    )
    up = decide(policy, obs(100, 0), Memory(since=-100.0), now=0.0)
    assert up.desired == 4
    held = decide(policy, obs(0, 4), up.memory, now=10.0)
    assert held.desired == 4 and "cooldown" in held.reason
    down = decide(policy, obs(0, 4), held.memory, now=21.0)
    assert down.desired == 0


def test_scale_to_zero_and_the_activation_threshold() -> None:
    policy = Policy(
        min_workers=0, max_workers=4, activation_backlog=5, stabilization_s=1.0, cooldown_s=0.0
    )
    idle = Memory(since=-10.0)
    assert decide(policy, obs(0, 1), idle, now=0.0).desired == 0
    assert decide(policy, obs(4, 0), idle, now=0.0).desired == 0  # below activation
    assert decide(policy, obs(5, 0), idle, now=0.0).desired == 1
    # a running job keeps its worker even with nothing waiting
    assert decide(policy, obs(0, 1, running=1), idle, now=0.0).desired == 1


def test_unknown_service_rate_uses_the_default() -> None:
    policy = Policy(default_service_rate=0.5, target_queue_wait_s=10.0, max_workers=100)
    assert recommend(policy, Observation(20, 0, 0.0, 0.0, 1)) == 4


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        Policy(min_workers=3, max_workers=2)


#: ``inferq simulate``'s policy flags and the settings whose defaults they take.
SIMULATE_FLAGS = {
    "min_workers": "autoscaler_min_workers",
    "target_wait": "autoscaler_target_wait_s",
    "max_step": "autoscaler_max_step",
    "poll": "autoscaler_poll_s",
    "window": "autoscaler_window_s",
    "stabilization": "autoscaler_stabilization_s",
    "cooldown": "autoscaler_cooldown_s",
}


def test_the_policy_and_simulate_take_their_defaults_from_the_settings() -> None:
    """Catches: a default copied into ``Policy`` or an ``inferq simulate`` flag that drifts
    from ``AutoscalerSettings`` (tried: ``cooldown_s: float = 45.0`` in Policy, and
    ``--poll`` back to ``default=5.0`` with the setting's default changed to 10.0)."""
    from inferq.cli.simulate_cmds import simulate

    defaults = AutoscalerSettings()
    assert Policy() == Policy.from_settings(defaults)
    flags = {param.name: param.default for param in simulate.params}
    assert {flag: flags[flag] for flag in SIMULATE_FLAGS} == {
        flag: getattr(defaults, field) for flag, field in SIMULATE_FLAGS.items()
    }
    # The one flag of its own: the simulation sizes a fleet for its 10,000 jobs/s peak.
    assert flags["max_workers"] == 500
