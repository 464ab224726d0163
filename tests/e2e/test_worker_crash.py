"""A worker killed with SIGKILL while it holds jobs loses none: they finish on another.

Each scenario runs in a namespace of its own: jobs other tests of the same process left
queued and published (tests that run no worker) would otherwise reach the victim first,
and the jobs it held at the kill would not be this test's."""

from __future__ import annotations

import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import pytest

from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.e2e.conftest import Stack
from tests.factories import holdout, register_fixture_model, running_ids, running_on
from tests.processes import ServiceProcess

pytestmark = pytest.mark.e2e

JOBS = 40


def crash_and_recover(stack: Stack, keys: Keys) -> None:
    settings = stack.settings
    register_fixture_model(
        settings, "slow-digits", "tests.fixture_models.slow:SlowDigits", {"delay_s": 0.4}
    )
    client = stack.client(keys.alice)
    pairs = holdout(JOBS)

    # Given a worker busy with a backlog of slow jobs (one batch running, more prefetched;
    # batches of a few jobs, so the backlog lasts seconds however slowly the jobs came in)
    with ThreadPoolExecutor(max_workers=8) as pool:
        jobs = list(pool.map(lambda pair: client.submit("slow-digits", pair[0]), pairs))
    victim = stack.start_worker(f"victim-{settings.namespace}")
    held = frozen_holding(stack, victim, {job["id"] for job in jobs})

    # When it is killed outright, and another worker starts
    victim.kill()
    survivor = stack.start_worker(f"survivor-{settings.namespace}")

    # Then every job finishes, exactly once, and none is lost
    with ThreadPoolExecutor(max_workers=8) as pool:
        finished = list(pool.map(lambda job: client.wait(job["id"], timeout_s=120), jobs))
    statuses = [job["status"] for job in finished]
    assert statuses == ["succeeded"] * JOBS, statuses
    by_survivor = [job for job in finished if job["worker"].startswith(survivor.name)]
    retried = [job for job in finished if job["attempts"] > 1]
    print(
        f"\n{len(by_survivor)} of {JOBS} jobs finished on the survivor; {len(retried)} were retried"
    )
    assert by_survivor, "the survivor should have finished the victim's jobs"
    # The jobs running at the kill ran again, on the survivor, their attempt counted
    at_kill = {job["id"]: (job["worker"], job["attempts"]) for job in finished if job["id"] in held}
    assert at_kill.keys() == held
    assert all(
        worker.startswith(survivor.name) and attempts >= 2 for worker, attempts in at_kill.values()
    ), at_kill
    correct = sum(
        job["output"]["label"] == label for job, (_, label) in zip(finished, pairs, strict=True)
    )
    assert correct >= 0.9 * JOBS
    assert not victim.alive()


def frozen_holding(stack: Stack, victim: ServiceProcess, ours: set[str]) -> set[str]:
    """Stop ``victim`` (SIGSTOP) while it runs a batch of ``ours``, and return the ids of
    ours it holds then: a stopped worker cannot finish or let go of them before it is
    killed."""
    name, url = victim.name, stack.settings.database_url or ""
    deadline = time.monotonic() + 30
    while True:
        assert time.monotonic() < deadline, "the victim never started a job"
        if running_on(url, name):
            victim.pause()
            held = running_ids(url, name) & ours
            if held:
                return held
            victim.resume()  # its batch ended in between: catch the next one
        time.sleep(0.05)


def test_sigkill_loses_no_job_on_redis(
    settings: Settings, stacks: Callable[[Settings, int], Stack], keys: Keys
) -> None:
    own = settings.replace(max_batch_size=4, namespace=f"{settings.namespace}kill")
    crash_and_recover(stacks(own, 0), keys)


@pytest.mark.rabbitmq
def test_sigkill_loses_no_job_on_rabbitmq(
    amqp_settings: Settings, stacks: Callable[[Settings, int], Stack], keys: Keys
) -> None:
    own = amqp_settings.replace(max_batch_size=4, namespace=f"{amqp_settings.namespace}kill")
    crash_and_recover(stacks(own, 0), keys)
