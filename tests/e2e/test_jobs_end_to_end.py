"""Submit → queue → worker → Postgres → long-poll, over HTTP, with real processes."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from inferq.client import Client
from tests.conftest import Keys
from tests.e2e.conftest import Stack
from tests.factories import holdout, register_fixture_model

pytestmark = pytest.mark.e2e

JOBS = 300


def submit_and_collect(
    client: Client, pairs: list[tuple[dict[str, Any], int]]
) -> list[dict[str, Any]]:
    with ThreadPoolExecutor(max_workers=16) as pool:
        submitted = list(pool.map(lambda pair: client.submit("digits", pair[0]), pairs))
        return list(pool.map(lambda job: client.wait(job["id"], timeout_s=180), submitted))


def check_run(stack: Stack, keys: Keys) -> None:
    # Given 300 digits from the holdout set
    pairs = holdout(JOBS)
    # When they are submitted over HTTP and long-polled
    finished = submit_and_collect(stack.client(keys.alice), pairs)
    # Then every one succeeded, on a real worker, and the labels are right
    assert [job["status"] for job in finished] == ["succeeded"] * JOBS
    assert all(job["worker"] and job["worker"].startswith("w") for job in finished)
    correct = sum(
        job["output"]["label"] == label for job, (_, label) in zip(finished, pairs, strict=True)
    )
    accuracy = correct / JOBS
    print(f"\n{stack.settings.broker_url.split(':')[0]}: accuracy {accuracy:.3f} over {JOBS} jobs")
    assert accuracy >= 0.95
    assert all(len(job["output"]["probabilities"]) == 10 for job in finished)
    assert all(
        job["metrics"]["predict_ms"] is not None and job["metrics"]["queue_ms"] >= 0
        for job in finished
    )
    # Under concurrent load the workers batch: some jobs ran in batches of more than one.
    sizes = Counter(job["metrics"]["batch_size"] for job in finished)
    print(f"batch sizes (size: jobs): {dict(sorted(sizes.items()))}")
    assert max(sizes) > 1


def test_300_jobs_on_redis(redis_stack: Stack, keys: Keys) -> None:
    check_run(redis_stack, keys)


@pytest.mark.rabbitmq
def test_300_jobs_on_rabbitmq(amqp_stack: Stack, keys: Keys) -> None:
    check_run(amqp_stack, keys)


def test_prefer_wait_answers_200_with_the_result(redis_stack: Stack, keys: Keys) -> None:
    pixels, label = holdout(1)[0]
    job = redis_stack.client(keys.alice).submit("digits", pixels, wait=20)
    assert job["status"] == "succeeded"
    assert job["output"]["label"] == label


def test_long_poll_returns_within_100ms_of_completion(redis_stack: Stack, keys: Keys) -> None:
    """Measured against the job's own completed_at (Postgres and this process share a clock)."""
    import datetime as dt
    import statistics

    register_fixture_model(
        redis_stack.settings,
        "slow-digits",
        "tests.fixture_models.slow:SlowDigits",
        {"delay_s": 0.3},
    )
    client = redis_stack.client(keys.alice)
    lags_ms = []
    for pixels, _ in holdout(10):
        job = client.submit("slow-digits", pixels)
        job = client.get(job["id"], wait=20)
        received = dt.datetime.now(dt.timezone.utc)
        assert job["status"] == "succeeded"
        lags_ms.append(
            (received - dt.datetime.fromisoformat(job["completed_at"])).total_seconds() * 1000
        )
    print(
        f"\nlong-poll lag after completion (ms): median {statistics.median(lags_ms):.1f}, max {max(lags_ms):.1f}"
    )
    assert statistics.median(lags_ms) < 100
    assert all(lag >= 0 for lag in lags_ms)
