"""A shadow experiment through real processes: the API mirrors jobs over the broker, a real
worker runs the candidate and stores its outputs, the scheduler decides on its own."""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.e2e.conftest import Stack, start_stack
from tests.factories import digits_variants, experiment_model, holdout

pytestmark = pytest.mark.e2e

JOBS = 80


@pytest.fixture
def stack(settings: Settings, digits_version: int, keys: Keys, tmp_path: Path) -> Iterator[Stack]:
    # The scheduler checks experiments every second here, instead of every 30.
    fast = settings.replace(experiment_interval_s=1.0)
    running = start_stack(fast, tmp_path, workers=1)
    yield running
    running.stop()


def eventually(read: Any, done: Any, timeout_s: float = 90.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        value = read()
        if done(value) or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_a_shadow_experiment_runs_and_is_decided_by_the_scheduler(
    stack: Stack, keys: Keys, operator_key: str
) -> None:
    # Given a good active version and a worse candidate shadowing it
    variants = digits_variants()
    model = experiment_model(stack.settings, [variants["good"], variants["bad"]], active=1)
    operator, alice = stack.client(operator_key), stack.client(keys.alice)
    experiment = operator.start_experiment(
        {
            "model": model,
            "mode": "shadow",
            "arms": [{"version": 1}, {"version": 2}],
            "policy": {"min_feedback": 40, "alpha": 0.01},
        }
    )
    # When users submit over HTTP and wait for their answers
    pairs = holdout(JOBS)
    with ThreadPoolExecutor(max_workers=8) as pool:
        submitted = list(
            pool.map(lambda i: alice.submit(model, pairs[i][0], user=f"e2e-{i}"), range(JOBS))
        )
        finished = list(pool.map(lambda job: alice.wait(job["id"], timeout_s=120), submitted))
    # Then every client saw the active version's answer, and nothing of the candidate
    assert {job["status"] for job in finished} == {"succeeded"}
    assert {job["version"] for job in finished} == {1}
    assert all(set(job["output"]) == {"label", "probabilities"} for job in finished)
    # and the worker stored the candidate's outputs next to them
    report = eventually(
        lambda: operator.experiment(experiment["id"]),
        lambda r: r["arms"][1]["jobs"] >= JOBS,
    )
    assert report["arms"][1]["jobs"] == JOBS and report["arms"][1]["failed"] == 0
    assert report["arms"][1]["agreement"]["compared"] == JOBS
    assert report["arms"][1]["agreement"]["rate"] < 1.0
    # When feedback arrives, the scheduler's own check ends it, keeping the active version
    for job, (_, label) in zip(finished, pairs, strict=True):
        alice.feedback(job["id"], label=label)
    final = eventually(
        lambda: operator.experiment(experiment["id"]), lambda r: r["status"] != "running"
    )
    assert final["status"] == "concluded", final
    assert (final["decision"]["decision"], final["decision"]["winner"]) == ("kept", "A")
    assert final["decision"]["decided_by"] == "scheduler"
    assert final["comparisons"][0]["significant"] is True
