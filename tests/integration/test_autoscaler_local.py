"""The autoscaler with the local backend and real worker processes, on Redis and RabbitMQ.

A burst scales the pool up at the first poll that sees it; a steady trickle afterwards lets
the pool shrink back while jobs keep arriving; every job succeeds once, none is lost or run
twice (counted from Postgres); the workers end at ``min_workers``. A pool at zero starts a
worker when jobs arrive and goes back to zero once idle.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from flask.testing import FlaskClient
from sqlalchemy import text

from api.app import create_app
from db.engine import make_engine, make_session_factory
from inferq.core.settings import Settings
from scheduler.autoscaler.loop import Autoscaler
from scheduler.autoscaler.observe import Observer
from scheduler.autoscaler.policy import Policy
from scheduler.backends.local import LocalBackend
from tests.conftest import Keys
from tests.factories import holdout, quiet_lane, register_fixture_model

MODEL = "autoscale-digits"
DELAY_S = 0.3
POLL_S = 0.5
#: The observer's window: arrival and service rates are measured over it.
WINDOW_S = 5.0
BURST = 24
POLICY = Policy(
    min_workers=1,
    max_workers=3,
    target_queue_wait_s=2.0,
    max_step=2,
    stabilization_s=3.0,
    cooldown_s=2.0,
)


@dataclasses.dataclass
class Scaling:
    settings: Settings
    backend: LocalBackend
    scaler: Autoscaler
    sessions: Any
    stop: threading.Event
    http: FlaskClient

    def rows(self, sql: str, **params: Any) -> list[Any]:
        with self.sessions() as session:
            return list(session.execute(text(sql), params))

    def decisions(self, since: float) -> list[Any]:
        return self.rows(
            "SELECT extract(epoch FROM at), current, desired, direction, inputs, reason"
            " FROM scaling_decisions WHERE pool = :pool AND at >= to_timestamp(:t) ORDER BY id",
            pool=self.scaler.pool,
            t=since,
        )


def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


@contextlib.contextmanager
def autoscaled(
    run: Settings, policy: Policy, logs: Path, prefix: str, window_s: float = WINDOW_S
) -> Iterator[Scaling]:
    """An autoscaler of ``run``'s online pool, polling in a thread, over a local backend."""
    engine = make_engine(run.database_url or "", pool_size=2)
    sessions = make_session_factory(engine)
    backend = LocalBackend(run, logs, prefix=prefix)
    observer = Observer(run, ("online",), sessions, window_s=window_s)
    scaler = Autoscaler(policy, observer, backend, sessions, poll_s=POLL_S)
    stop = threading.Event()
    thread = threading.Thread(target=scaler.run, args=(stop,), daemon=True)
    thread.start()
    try:
        yield Scaling(run, backend, scaler, sessions, stop, create_app(run).test_client())
    finally:
        stop.set()
        thread.join(timeout=30)
        backend.close()
        observer.close()
        engine.dispose()


@pytest.fixture(params=["redis", "amqp"])
def scaling(
    request: pytest.FixtureRequest, settings: Settings, digits_version: int, tmp_path: Path
) -> Iterator[Scaling]:
    base = settings if request.param == "redis" else request.getfixturevalue("amqp_settings")
    # One job per batch and no prefetch beyond it: a new worker gets work at once.
    run = base.replace(max_batch_size=1, worker_prefetch=1)
    register_fixture_model(run, MODEL, "tests.fixture_models.slow:SlowDigits", {"delay_s": DELAY_S})
    # the backlog observed is every open job of the lane: those earlier tests left (queued on
    # another broker, or never to be sent) would keep the pool from shrinking
    quiet_lane(run)
    with autoscaled(run, POLICY, tmp_path, f"as-{request.param}") as found:
        yield found


def submit(http: FlaskClient, key: str, count: int, model: str = MODEL) -> list[str]:
    ids = []
    for pixels, _ in holdout(count):
        response = http.post(
            "/v1/jobs",
            json={"model": model, "input": pixels},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert response.status_code in (200, 202), response.get_json()
        ids.append(response.get_json()["id"])
    return ids


def test_burst_scales_up_at_once_and_steady_load_scales_down_without_losing_a_job(
    scaling: Scaling, keys: Keys, operator_key: str
) -> None:
    http = scaling.http
    # Given an idle pool at min_workers, its worker ready
    wait_until(
        lambda: len(scaling.scaler.observer.live_workers()) == 1, 90, "the first worker never beat"
    )
    # and no job of the lane finished within the window: jobs that earlier tests ran
    # in-process (far faster than this slow model) would set the service rate, and one worker
    # would look enough for the burst
    wait_until(
        lambda: (
            not scaling.rows(
                "SELECT 1 FROM jobs WHERE lane = 'online' AND started_at IS NOT NULL AND NOT cached"
                " AND completed_at > clock_timestamp() - make_interval(secs => :w) LIMIT 1",
                w=WINDOW_S,
            )
        ),
        WINDOW_S + 30,
        "jobs kept finishing on the lane",
    )
    # When a burst of slow jobs arrives
    burst_at = time.time()
    jobs = submit(http, keys.alice, BURST)

    submitted_at = time.time()

    # Then the first decision after it has scaled up (it, or one that saw the burst arrive)
    wait_until(lambda: scaling.decisions(submitted_at), 10, "no decision after the burst")
    first = scaling.decisions(submitted_at)[0]
    assert first[2] > POLICY.min_workers, first
    # at the first poll after the burst (with slack for a loaded machine): a scale-up does
    # not wait out a stabilization window as a scale-down does
    assert float(first[0]) - submitted_at < POLL_S + 2.0, "not at the first poll"
    ups = [d for d in scaling.decisions(burst_at) if d[3] == "up"]
    assert ups and ups[0][4]["observation"]["backlog"] > 0

    # And while a steady trickle keeps coming (one worker keeps up), the pool shrinks once
    # the burst is drained and stabilization_s has passed (how soon depends on how fast the
    # new workers started, so the trickle goes on until then, within a bound)
    def downs() -> list[Any]:
        return [d for d in scaling.decisions(burst_at) if d[3] == "down"]

    trickle_end = time.monotonic() + 90
    while not downs():
        assert time.monotonic() < trickle_end, "the pool never shrank during the steady load"
        jobs += submit(http, keys.alice, 1)
        time.sleep(0.5)

    # And every job succeeds exactly once: none lost, none run twice
    def unfinished() -> int:
        return int(
            scaling.rows(
                "SELECT count(*) FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))"
                " AND status IN ('queued', 'running')",
                ids=jobs,
            )[0][0]
        )

    wait_until(lambda: unfinished() == 0, 120, "the backlog never drained")
    rows = scaling.rows(
        "SELECT status, attempts, output IS NOT NULL FROM jobs WHERE id = ANY(CAST(:ids AS uuid[]))",
        ids=jobs,
    )
    lost = [r for r in rows if r[0] != "succeeded" or not r[2]]
    twice = [r for r in rows if r[1] != 1]
    assert len(rows) == len(jobs) and lost == [] and twice == [], (len(lost), len(twice))

    # And the workers return to min_workers, the stopped ones having exited
    wait_until(
        lambda: scaling.backend.current() == POLICY.min_workers and not scaling.backend.draining,
        60,
        f"workers did not return to {POLICY.min_workers}",
    )
    # And GET /v1/scaling shows the operator the pool and its decisions
    view = http.get("/v1/scaling", headers={"Authorization": f"Bearer {operator_key}"}).get_json()
    pool = next(p for p in view["pools"] if p["pool"] == "online")
    assert pool["current"] >= 1 and pool["lanes"][0]["lane"] == "online"
    assert view["decisions"]


#: Scale to zero, with windows as short as a poll allows: the test waits them out.
ZERO = Policy(
    min_workers=0,
    max_workers=1,
    target_queue_wait_s=2.0,
    max_step=1,
    stabilization_s=1.0,
    cooldown_s=1.0,
    activation_backlog=1,
)
ZERO_WINDOW_S = 2.0


@pytest.fixture
def at_zero(settings: Settings, digits_version: int, tmp_path: Path) -> Iterator[Scaling]:
    quiet_lane(settings)  # nothing earlier tests left may wake the pool
    with autoscaled(settings, ZERO, tmp_path, "zero", window_s=ZERO_WINDOW_S) as found:
        yield found


def test_a_pool_at_zero_starts_a_worker_for_arriving_jobs_and_returns_to_zero_when_idle(
    at_zero: Scaling, keys: Keys
) -> None:
    """0 -> 1 -> 0 with real ``inferq worker`` processes; every job runs once.

    Catches: a pool at zero that never activates (the activation rule keeping it at zero
    with jobs waiting), one that never goes back to zero (a floor of one worker in the
    policy, or a backend that does not scale to zero), and a stopped worker that never
    exits (no SIGTERM sent, so it stays draining).
    """
    scaling, started = at_zero, time.time()
    # Given an idle pool at zero: the autoscaler polls and keeps no worker
    wait_until(lambda: scaling.decisions(started), 10, "the autoscaler made no decision")
    assert {(d[1], d[2]) for d in scaling.decisions(started)} == {(0, 0)}
    assert scaling.backend.current() == 0
    # When jobs arrive
    jobs = submit(scaling.http, keys.alice, 4, model="digits")
    # Then a worker is started for them and runs them all, once each
    wait_until(lambda: scaling.backend.current() == 1, 10, "no worker started for the jobs")

    def finished() -> list[Any]:
        return scaling.rows(
            "SELECT status, attempts, output IS NOT NULL, worker FROM jobs"
            " WHERE id = ANY(CAST(:ids AS uuid[])) AND status NOT IN ('queued', 'running')",
            ids=jobs,
        )

    wait_until(lambda: len(finished()) == len(jobs), 90, "the jobs were never run")
    assert {(r[0], r[1], r[2]) for r in finished()} == {("succeeded", 1, True)}
    assert {r[3].split("@")[0] for r in finished()} == {"zero-1"}
    # And once idle (no arrival for a window, stable for stabilization_s), the worker is
    # told to stop, drains and exits: the pool is back at zero
    wait_until(
        lambda: scaling.backend.current() == 0 and not scaling.backend.draining,
        60,
        "the idle worker was not stopped",
    )
    moves = [(d[1], d[2]) for d in scaling.decisions(started) if d[3] != "hold"]
    assert moves == [(0, 1), (1, 0)], moves
    # and it stays there: the next poll keeps zero
    stopped_at = time.time()
    wait_until(lambda: scaling.decisions(stopped_at), 10, "the autoscaler stopped polling")
    assert scaling.decisions(stopped_at)[0][2] == 0
