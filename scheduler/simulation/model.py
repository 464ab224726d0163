"""The SimPy model: arrivals each tick, workers that cold-start and drain, the real policy.

Every ``poll_s`` the autoscaler process builds the same :class:`Observation` the live
autoscaler reads from the broker and Postgres (backlog, running, arrivals and per-busy-worker
service rate over ``window_s``, workers the backend runs) and calls
``scheduler.autoscaler.policy.decide`` (looked up at each call, so a test can swap it). A
started worker serves after ``cold_start_s``; a stopped one takes no new batch and is paid
for ``drain_s`` more (warm shutdown); a worker still starting is cancelled first. An
autoscaled pool starts with the workers the first second's arrivals need at the curve's best
rate (as it would stand after a quiet while); a fixed fleet is ready from the start.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Generator

import numpy as np
import simpy

from scheduler.autoscaler import policy as autoscaling
from scheduler.autoscaler.policy import Memory, Observation, Policy
from scheduler.simulation import profiles
from scheduler.simulation.curves import Curve
from scheduler.simulation.fluid import Pool
from scheduler.simulation.waits import WaitLog

#: A SimPy process: it yields events and is resumed when each fires.
Events = Generator[simpy.Event, object, None]

SERIES = ("arrivals", "served", "batches", "busy_s", "queued", "ready", "starting", "draining")


@dataclasses.dataclass(frozen=True)
class Scenario:
    """What is simulated: traffic, the workers' curve and lifecycle, the clock."""

    curve: Curve
    profile: str = "day"
    duration_s: float = profiles.DAY_S
    peak: float = 10_000.0
    max_batch: int | None = None
    cold_start_s: float = 30.0
    drain_s: float = 10.0
    tick_s: float = 1.0
    poll_s: float = 5.0
    window_s: float = 60.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.profile not in profiles.PROFILES:
            raise ValueError(f"unknown profile {self.profile!r}")
        if min(self.duration_s, self.tick_s, self.poll_s, self.window_s) <= 0 or self.peak < 0:
            raise ValueError("durations must be positive and the peak not negative")

    def arrivals(self) -> np.ndarray:
        """Jobs arriving in each tick: Poisson around the profile (seeded)."""
        ticks = math.ceil(self.duration_s / self.tick_s)
        starts = np.arange(ticks) * self.tick_s
        mids = np.minimum(starts + self.tick_s / 2, self.duration_s)
        shape = np.array([profiles.rate(self.profile, t, self.duration_s, 1.0) for t in mids])
        rng = np.random.default_rng(self.seed)
        return rng.poisson(shape * self.peak * self.tick_s).astype(float)


@dataclasses.dataclass
class Run:
    """One simulated run: per-tick series, the waits, the decisions taken."""

    scenario: Scenario
    fixed: int | None
    series: dict[str, np.ndarray]
    waits: WaitLog
    decisions: dict[str, int]

    @property
    def times(self) -> np.ndarray:
        """Start of each tick, seconds."""
        return np.arange(len(self.series["arrivals"])) * self.scenario.tick_s

    @property
    def workers(self) -> np.ndarray:
        """Workers paid for in each tick: serving, starting and draining."""
        s = self.series
        return np.asarray(s["ready"] + s["starting"] + s["draining"])

    @property
    def worker_seconds(self) -> float:
        """Worker-seconds paid for over the run."""
        return float(self.workers.sum() * self.scenario.tick_s)


class Simulation:
    """A pool under ``policy`` (autoscaled) or ``fixed`` workers (always ready)."""

    def __init__(
        self, scenario: Scenario, policy: Policy | None = None, fixed: int | None = None
    ) -> None:
        if (policy is None) == (fixed is None):
            raise ValueError("give a policy or a fixed fleet, not both")
        self.scenario = scenario
        self.policy = policy
        self.env = simpy.Environment()
        self.arrivals = scenario.arrivals()
        ticks = len(self.arrivals)
        self.series = {name: np.zeros(ticks) for name in SERIES}
        self.series["arrivals"] = self.arrivals
        curve = scenario.curve
        sizes = np.arange(1, (scenario.max_batch or curve.max_batch) + 1)
        self.pool = Pool(curve.throughputs(len(sizes)), curve.latency(sizes), WaitLog())
        self.fixed = fixed
        best = float(curve.throughputs(len(sizes)).max())
        self.ready = fixed if fixed is not None else self._steady(policy, best)
        self.starting: list[simpy.Process] = []
        self.draining = 0
        self.in_flight = 0.0
        self.decisions = {"up": 0, "down": 0, "hold": 0}
        self._memory = Memory()
        self._tick = 0

    def _steady(self, policy: Policy | None, best: float) -> int:
        """An autoscaled pool starts as it would stand after a while at the first
        second's arrivals: enough workers at the curve's best rate, within the bounds."""
        assert policy is not None
        first = profiles.rate(self.scenario.profile, 0.0, self.scenario.duration_s, 1.0)
        need = math.ceil(first * self.scenario.peak / best)
        return max(policy.min_workers, min(policy.max_workers, need))

    def run(self) -> Run:
        """Simulate the whole duration."""
        self.env.process(self._ticks())
        if self.policy is not None:
            self.env.process(self._autoscaler())
        self.env.run(until=len(self.arrivals) * self.scenario.tick_s)
        self.pool.close(self.env.now)
        return Run(self.scenario, self.fixed, self.series, self.pool.waits, self.decisions)

    def _ticks(self) -> Events:
        dt = self.scenario.tick_s
        s = self.series
        for i, arriving in enumerate(self.arrivals):
            self._tick = i
            s["ready"][i], s["starting"][i] = self.ready, len(self.starting)
            s["draining"][i] = self.draining
            done = self.pool.tick(self.env.now, dt, float(arriving), self.ready)
            s["served"][i], s["batches"][i], s["busy_s"][i] = done.jobs, done.batches, done.busy_s
            s["queued"][i] = self.pool.queued
            self.in_flight = done.jobs / dt * done.batch_s
            yield self.env.timeout(dt)

    def _autoscaler(self) -> Events:
        assert self.policy is not None
        while True:
            yield self.env.timeout(self.scenario.poll_s)
            decision = autoscaling.decide(self.policy, self.observe(), self._memory, self.env.now)
            self._memory = decision.memory
            self.decisions[decision.direction] += 1
            self.scale(decision.desired)

    def observe(self) -> Observation:
        """What the live observer would read now."""
        s, sc = self.series, self.scenario
        stop = self._tick + 1
        start = max(0, stop - round(sc.window_s / sc.tick_s))
        busy = float(s["busy_s"][start:stop].sum())
        served = float(s["served"][start:stop].sum())
        return Observation(
            backlog=round(self.pool.queued),
            running=round(self.in_flight),
            arrival_rate=float(s["arrivals"][start:stop].sum()) / sc.window_s,
            service_rate=served / busy if busy > 0 else 0.0,
            current=self.ready + len(self.starting),
        )

    def scale(self, desired: int) -> None:
        """Start or stop workers until the backend runs ``desired``."""
        current = self.ready + len(self.starting)
        for _ in range(desired - current):
            self.starting.append(self.env.process(self._start()))
        surplus = current - desired
        while surplus > 0 and self.starting:
            self.starting.pop().interrupt()
            surplus -= 1
        if surplus > 0:
            self.ready -= surplus
            self.env.process(self._drain(surplus))

    def _start(self) -> Events:
        try:
            yield self.env.timeout(self.scenario.cold_start_s)
        except simpy.Interrupt:
            return  # cancelled while starting: already off the list
        self.starting.remove(self.env.active_process)  # type: ignore[arg-type]
        self.ready += 1

    def _drain(self, count: int) -> Events:
        self.draining += count
        yield self.env.timeout(self.scenario.drain_s)
        self.draining -= count
