"""Where is my job, under a known backlog: jobs queued while no worker runs say why they
wait; once one worker (of a slow fixture model, one job at a time) works through them, each
job's reported position is the order it starts in, and its ETA is within sensible bounds of
when its result actually came."""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from api.services import position as whereis
from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.e2e.conftest import Stack, start_stack
from tests.factories import holdout, quiet_lane, register_fixture_model

pytestmark = pytest.mark.e2e

MODEL = "slow-eta"
DELAY_S = 0.5  # per batch, and every batch is one job: long beside a request
JOBS = 16


@pytest.fixture
def stack(settings: Settings, digits_version: int, keys: Keys, tmp_path: Path) -> Iterator[Stack]:
    one_at_a_time = settings.replace(max_batch_size=1)
    register_fixture_model(
        one_at_a_time, MODEL, "tests.fixture_models.slow:SlowDigits", {"delay_s": DELAY_S}
    )
    # jobs earlier tests left queued would stand ahead of this backlog, and this stack's
    # reconciler would re-send them to its worker midway
    quiet_lane(settings)
    running = start_stack(one_at_a_time, tmp_path, workers=0)
    yield running
    running.stop()


def when(value: str) -> float:
    return dt.datetime.fromisoformat(value).timestamp()


def test_position_and_eta_under_a_known_backlog(stack: Stack, keys: Keys) -> None:
    client = stack.client(keys.alice)
    # Given a backlog of slow jobs and no worker
    ids = [client.submit(MODEL, pixels)["id"] for pixels, _ in holdout(JOBS)]
    first, last = client.get(ids[0]), client.get(ids[-1])
    # Then they know their place, have no ETA, and say that no worker is there
    assert (first["position"], last["position"]) == (0, JOBS - 1)
    assert first["eta_s"] is None and last["eta_s"] is None
    assert first["stuck"]["reason"] == last["stuck"]["reason"] == "no-live-worker"

    # When one worker starts and has run a few of them (its time per job is measured, the
    # first one's model load diluted); one worker runs them in order, so the third is enough
    stack.start_worker(f"eta-{stack.settings.namespace}")
    assert client.wait(ids[2], timeout_s=90)["status"] == "succeeded"
    time.sleep(whereis.LANE_CACHE_S + 0.1)  # API nodes keep lane figures for this long
    reports = []
    for job_id in ids:
        before = time.time()
        job = client.get(job_id)
        if job["status"] == "queued":
            reports.append((job_id, job["position"], job["eta_s"], (before, time.time())))
            assert job["stuck"] is None, job["stuck"]  # a worker consumes the lane now
    assert len(reports) >= JOBS // 2, "the worker ran through the backlog too fast to measure"

    # Then, once all are done: each position was the number of jobs ahead that had not
    # started at the moment it was counted, somewhere between sending the request and
    # reading its answer (give or take the one being claimed at that very moment)
    finished = {job_id: client.wait(job_id, timeout_s=60) for job_id in ids}
    assert {job["status"] for job in finished.values()} == {"succeeded"}
    started = [when(finished[job_id]["started_at"]) for job_id in ids]
    assert started == sorted(started), "one worker, one job at a time: first in, first out"
    for job_id, position, _, (sent, answered) in reports:
        ahead = started[: ids.index(job_id)]
        at_most = sum(1 for at in ahead if at > sent)
        at_least = sum(1 for at in ahead if at > answered)
        assert at_least - 1 <= position <= at_most + 1, (position, at_least, at_most)

    # and each ETA is within bounds of when its result actually came
    print(f"\n{'position':>8} {'eta_s':>6} {'actual_s':>8}")
    for job_id, position, eta, (sent, answered) in reports:
        completed = when(finished[job_id]["completed_at"])
        print(f"{position:>8} {eta or 0:>6.2f} {completed - answered:>8.2f}")
        assert eta is not None and eta > 0
        assert 0.5 * eta - 1.0 <= completed - sent, (position, eta, completed - sent)
        assert completed - answered <= 2.0 * eta + 1.0, (position, eta, completed - answered)
