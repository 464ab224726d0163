"""Submit → queue → worker → Postgres → long-poll, over HTTP, with real processes."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
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


def test_a_job_answered_in_one_trip_says_where_its_time_went(
    redis_stack: Stack, keys: Keys
) -> None:
    """``Server-Timing`` and the job's ``fetched_at`` break a submit with ``Prefer: wait``
    down stage by stage, from the client's send to its answer, in order and adding up to
    its latency. (Checked against the worker not passing ``fetched_at`` on in its completion
    fields: the woken answer's ``fetched_at`` is null, and this fails.)"""
    import asyncio
    import datetime as dt

    from inferq.bench import load, stages

    pairs = holdout(5)
    target = load.Target(redis_stack.url, keys.alice, "digits", lambda n: pairs[n][0], mode="wait")

    async def run() -> list[load.Sample]:
        async with load._session(target, 1) as session:
            return [await load.run_job(session, target, n) for n in range(len(pairs))]

    samples = [s for s in asyncio.run(run()) if not s.cached]
    assert samples and all(s.ok for s in samples)
    for sample in samples:
        assert sample.stages is not None
        assert list(sample.stages) == list(stages.STAGES)
        assert sum(sample.stages.values()) == pytest.approx(sample.latency_ms, abs=0.5)
        # The stages one process times are never negative; the two that compare two
        # processes' clocks may be (stages.py says why).
        across = {"published → fetched", "stored → woken"}
        timed = {k: v for k, v in sample.stages.items() if k not in across}
        assert min(timed.values()) >= 0, sample.stages

    job = redis_stack.client(keys.alice).submit("digits", pairs[0][0], wait=20)
    if not job["cached"]:
        times = [dt.datetime.fromisoformat(job[k]) for k in ("fetched_at", "started_at")]
        created = dt.datetime.fromisoformat(job["created_at"])
        assert created <= times[0] <= times[1]


def test_inferq_bench_sweeps_clients_and_prints_the_stages(
    redis_stack: Stack, keys: Keys, tmp_path: Path
) -> None:
    """``inferq bench --concurrency 1,4``: one report per level, each with the p50 of every
    stage, over every job not answered from the result cache."""
    import json

    from click.testing import CliRunner

    from inferq.bench import stages
    from inferq.cli import main

    env = {
        **redis_stack.settings.to_env(),
        "INFERQ_URL": redis_stack.url,
        "INFERQ_API_KEY": keys.alice,
        "INFERQ_HOME": str(tmp_path),
    }
    out = tmp_path / "bench.json"
    result = CliRunner().invoke(
        main,
        ["bench", "--concurrency", "1,4", "--duration", "1.5", "--output", str(out)],
        env=env,
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    levels = json.loads(out.read_text())["sweep"]
    assert [level["concurrency"] for level in levels] == [1, 4]
    for level in levels:
        assert level["jobs"] > 0 and level["failed"] == 0, level["errors"]
        assert level["stages_jobs"] == level["jobs"] - level["cache_hits"] > 0
        assert list(level["stages_p50_ms"]) == list(stages.STAGES)
        assert None not in level["stages_p50_ms"].values()
    # the second level against the first, as issue 21's targets are put
    one, four = levels
    assert four["against_first"] == {
        "clients": 1,
        "throughput": round(four["throughput_jobs_s"] / one["throughput_jobs_s"], 2),
        "p50": round(four["client_latency_ms"]["p50"] / one["client_latency_ms"]["p50"], 2),
    }
    assert "against 1 clients: p50" in result.output
    # and which processes of this host the jobs' CPU went to
    for level in levels:
        spent = level["cpu_ms_per_job_by_process"]
        assert spent["api"] > 0 and spent["worker"] > 0, spent
    assert "4 clients: CPU per job on this host, ms: " in result.output
