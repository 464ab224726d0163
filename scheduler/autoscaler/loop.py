"""The autoscaler's loop: observe, decide, record the decision in Postgres, act."""

from __future__ import annotations

import dataclasses
import logging
import threading
import time

from prometheus_client import Counter, Gauge
from sqlalchemy.orm import Session, sessionmaker

from db.engine import transaction
from db.scaling import record_decision
from scheduler.autoscaler.observe import Observer
from scheduler.autoscaler.policy import Decision, Memory, Policy, decide
from scheduler.backends import Backend

log = logging.getLogger(__name__)

WORKERS = Gauge(
    "inferq_autoscaler_workers", "Workers of a pool: current and desired", ["pool", "kind"]
)
BACKLOG = Gauge("inferq_autoscaler_backlog", "Jobs waiting to start in a pool's lanes", ["pool"])
DECISIONS = Counter(
    "inferq_autoscaler_decisions_total", "Autoscaler decisions by direction", ["pool", "direction"]
)


class Autoscaler:
    """Scales one pool of workers (the workers of ``observer.lanes``) through ``backend``."""

    def __init__(
        self,
        policy: Policy,
        observer: Observer,
        backend: Backend,
        sessions: sessionmaker[Session],
        poll_s: float = 5.0,
    ) -> None:
        self.policy = policy
        self.observer = observer
        self.backend = backend
        self.poll_s = poll_s
        self.pool = ",".join(observer.lanes)
        self._sessions = sessions
        self._memory = Memory()

    def step(self, now: float | None = None) -> Decision:
        """One poll: observe, decide, act, record; the decision made."""
        view = self.observer.observe()
        current = self.backend.current()
        observation = view.observation(current)
        decision = decide(
            self.policy, observation, self._memory, time.monotonic() if now is None else now
        )
        self._memory = decision.memory
        if decision.desired != current:
            log.info(
                "scaling %s %d -> %d: %s", self.pool, current, decision.desired, decision.reason
            )
            self.backend.scale(decision.desired, view.busy_workers)
        inputs = {
            "observation": dataclasses.asdict(observation),
            "recommended": decision.recommended,
            **view.as_json(),
            "policy": dataclasses.asdict(self.policy),
        }
        with transaction(self._sessions) as session:
            record_decision(
                session,
                pool=self.pool,
                backend=self.backend.name,
                current=current,
                desired=decision.desired,
                direction=decision.direction,
                reason=decision.reason,
                inputs=inputs,
            )
        WORKERS.labels(self.pool, "current").set(current)
        WORKERS.labels(self.pool, "desired").set(decision.desired)
        BACKLOG.labels(self.pool).set(observation.backlog)
        DECISIONS.labels(self.pool, decision.direction).inc()
        return decision

    def run(self, stop: threading.Event) -> None:
        """Poll every ``poll_s`` until ``stop`` is set; a failed poll is logged and retried."""
        while not stop.is_set():
            try:
                self.step()
            except Exception:
                log.exception("autoscaler poll failed")
            stop.wait(self.poll_s)
