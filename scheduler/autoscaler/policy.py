"""The scaling policy: a pure function from what was observed to how many workers to run.

``desired`` is the fewest workers that drain the backlog within ``target_queue_wait_s`` while
keeping up with arrivals: ``ceil((arrival_rate + backlog / target_queue_wait_s) / service_rate)``.
Up at once (at most ``max_step`` per decision); down only to the highest recommendation of
the last ``stabilization_s`` seconds and not within ``cooldown_s`` of the last change, so a
bursty queue does not flap. From zero it starts only once ``activation_backlog`` jobs wait.
"""

from __future__ import annotations

import dataclasses
import math

from inferq.core.settings import AutoscalerSettings

#: The settings' defaults, which a policy's own defaults are (never a copy of them).
_DEFAULTS = AutoscalerSettings()


@dataclasses.dataclass(frozen=True)
class Policy:
    """The operator's knobs; each default is the ``INFERQ_AUTOSCALER_*`` setting's."""

    min_workers: int = _DEFAULTS.autoscaler_min_workers
    max_workers: int = _DEFAULTS.autoscaler_max_workers
    target_queue_wait_s: float = _DEFAULTS.autoscaler_target_wait_s
    max_step: int = _DEFAULTS.autoscaler_max_step
    stabilization_s: float = _DEFAULTS.autoscaler_stabilization_s
    cooldown_s: float = _DEFAULTS.autoscaler_cooldown_s
    #: Jobs that must wait before a pool at zero starts a worker.
    activation_backlog: int = _DEFAULTS.autoscaler_activation
    #: Jobs per second one worker is assumed to finish before any was measured.
    default_service_rate: float = 1.0

    @classmethod
    def from_settings(cls, scaling: AutoscalerSettings) -> Policy:
        """The policy the ``INFERQ_AUTOSCALER_*`` settings describe."""
        return cls(
            min_workers=scaling.autoscaler_min_workers,
            max_workers=scaling.autoscaler_max_workers,
            target_queue_wait_s=scaling.autoscaler_target_wait_s,
            max_step=scaling.autoscaler_max_step,
            stabilization_s=scaling.autoscaler_stabilization_s,
            cooldown_s=scaling.autoscaler_cooldown_s,
            activation_backlog=scaling.autoscaler_activation,
        )

    def __post_init__(self) -> None:
        if not 0 <= self.min_workers <= self.max_workers or self.max_workers < 1:
            raise ValueError("need 0 <= min_workers <= max_workers and max_workers >= 1")
        if self.target_queue_wait_s <= 0 or self.max_step < 1 or self.default_service_rate <= 0:
            raise ValueError("need target_queue_wait_s > 0, max_step >= 1, service rate > 0")


@dataclasses.dataclass(frozen=True)
class Observation:
    """One poll's view of a worker pool (its lanes summed)."""

    #: Jobs waiting to start: ready on the broker or reserved (prefetched) by a worker.
    backlog: int
    #: Jobs a worker is running now.
    running: int
    #: Jobs submitted per second, and finished per second by one busy worker (0: unknown).
    arrival_rate: float
    service_rate: float
    #: Workers the backend runs now (draining ones excluded).
    current: int


@dataclasses.dataclass(frozen=True)
class Memory:
    """What a decision remembers for the next: recent recommendations, last change."""

    recommendations: tuple[tuple[float, int], ...] = ()
    last_change_at: float | None = None
    #: When the first decision was made: no scale-down before a whole window was seen.
    since: float | None = None


@dataclasses.dataclass(frozen=True)
class Decision:
    """How many workers to run, why, and the memory for the next decision."""

    current: int
    recommended: int
    desired: int
    reason: str
    memory: Memory

    @property
    def direction(self) -> str:
        """``up``, ``down`` or ``hold``."""
        if self.desired > self.current:
            return "up"
        return "down" if self.desired < self.current else "hold"


def recommend(policy: Policy, obs: Observation) -> int:
    """Workers needed for this observation alone, within ``min``/``max``."""
    rate = obs.service_rate if obs.service_rate > 0 else policy.default_service_rate
    demand = obs.arrival_rate + obs.backlog / policy.target_queue_wait_s
    needed = math.ceil(round(demand / rate, 6))
    if obs.backlog + obs.running > 0:
        needed = max(needed, 1)
    if obs.current == 0 and obs.running == 0 and obs.backlog < policy.activation_backlog:
        needed = 0
    return max(policy.min_workers, min(policy.max_workers, needed))


def decide(policy: Policy, obs: Observation, memory: Memory, now: float) -> Decision:
    """The decision for ``obs`` at ``now`` (seconds, monotonic), given the last ``memory``."""
    recommended = recommend(policy, obs)
    window = (
        *tuple((at, n) for at, n in memory.recommendations if now - at < policy.stabilization_s),
        (now, recommended),
    )
    current = obs.current
    if recommended > current:
        desired = min(recommended, current + policy.max_step)
        reason = f"scale up: {recommended} needed for backlog {obs.backlog}"
    elif recommended == current:
        desired, reason = current, "steady"
    else:
        stable = max(n for _, n in window)
        cooling = memory.last_change_at is not None and now - memory.last_change_at < (
            policy.cooldown_s
        )
        since = now if memory.since is None else memory.since
        if stable >= current or now - since < policy.stabilization_s:
            desired = current
            reason = f"hold: {stable} needed within the last {policy.stabilization_s:g}s"
        elif cooling:
            desired, reason = current, "hold: cooldown after the last change"
        else:
            desired = max(stable, current - policy.max_step)
            reason = f"scale down: at most {stable} needed for {policy.stabilization_s:g}s"
    desired = max(policy.min_workers, min(policy.max_workers, desired))
    changed = memory.last_change_at if desired == current else now
    since = now if memory.since is None else memory.since
    return Decision(current, recommended, desired, reason, Memory(window, changed, since))
