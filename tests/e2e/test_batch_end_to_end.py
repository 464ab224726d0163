"""Offline batches through ``inferq up`` with real nginx: one online worker, one batch worker.

20,000 digits go up as JSON Lines, run on the batch lane while online jobs keep their
latency, and come back in order, labelled as the same version predicts in this process. A
batch worker killed mid-batch loses nothing and duplicates nothing; bad uploads are 4xx
problems that leave nothing behind. Figures are printed (run with -s to see them).
"""

from __future__ import annotations

import io
import json
import statistics
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, func, select, text

from db.tables import Batch, Job
from inferq.client import Client
from inferq.core.broker import make_celery
from inferq.core.errors import InvalidInput, PayloadTooLarge
from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.e2e.nginx_stack import UpStack, nginx_binary
from tests.e2e.test_nginx_stack import kill_tree
from tests.factories import holdout
from workers.context import WorkerContext

pytestmark = pytest.mark.e2e

ITEMS = 20_000
ONLINE_SAMPLES = 40
#: Small enough that an oversized upload is cheap to send, large enough for 20,000 items.
MAX_BATCH_BYTES = 16 * 1024 * 1024


@pytest.fixture(scope="module")
def up(
    settings: Settings, digits_version: int, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UpStack]:
    nginx_binary()  # skip locally (fail in CI) without nginx
    stack = UpStack(
        settings,
        tmp_path_factory.mktemp("batch-up") / "home",
        ["--api-nodes", "1", "--workers", "1", "--batch-workers", "1"],
        INFERQ_RATE_LIMIT_RPS="100000",
        INFERQ_RATE_LIMIT_BURST="100000",
        INFERQ_MAX_BATCH_BYTES=str(MAX_BATCH_BYTES),
    )
    try:
        stack.wait_up()
        yield stack
    finally:
        stack.stop()


@pytest.fixture(scope="module")
def db(settings: Settings) -> Iterator[Any]:
    engine = create_engine(settings.database_url or "")
    yield engine
    engine.dispose()


def client(stack: UpStack, key: str) -> Client:
    return Client(stack.url, key, timeout_s=60)


def varied_inputs(count: int) -> list[dict[str, Any]]:
    """Holdout digits with two corner pixels set from the line number: (nearly) every line
    differs, so results out of order could not match by accident."""
    base = [pair[0]["pixels"] for pair in holdout()]
    inputs = []
    for i in range(count):
        pixels = list(base[i % len(base)])
        pixels[0], pixels[7] = float(i % 17), float((i // 17) % 17)
        inputs.append({"pixels": pixels})
    return inputs


def jsonl(inputs: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(item, separators=(",", ":")) + "\n" for item in inputs).encode()


def in_process_labels(
    settings: Settings, version_id: int, inputs: list[dict[str, Any]]
) -> list[int]:
    ctx = WorkerContext.create(settings, "e2e-reference@test", make_celery(settings))
    handler = ctx.runtime.handler(version_id)
    labels: list[int] = []
    for start in range(0, len(inputs), 512):
        part = inputs[start : start + 512]
        labels += [out["label"] for out in handler.predict([handler.prepare(i) for i in part])]
    ctx.redis.close()
    return labels


def online_latencies(c: Client, count: int) -> list[float]:
    """Submit online jobs one after another; each job's own created → completed time (ms)."""
    inputs = [pair[0] for pair in holdout(count)]
    totals = []
    for item in inputs:
        job = c.submit("digits", item, wait=10)
        job = job if job["status"] == "succeeded" else c.wait(job["id"], timeout_s=60)
        assert job["status"] == "succeeded" and job["lane"] == "online"
        totals.append(job["metrics"]["total_ms"])
    return totals


def wait_batch(c: Client, batch_id: str, timeout_s: float = 300) -> dict[str, Any]:
    return c.wait_batch(batch_id, timeout_s=timeout_s, interval_s=0.5)


def test_20000_inputs_as_jsonl_through_nginx_while_online_jobs_keep_their_latency(
    up: UpStack, keys: Keys, settings: Settings, db: Any
) -> None:
    c = client(up, keys.alice)
    inputs = varied_inputs(ITEMS)
    body = jsonl(inputs)
    # Given the online lane's latency when nothing else runs
    online_latencies(c, 5)  # warm-up: the online worker loads the model
    idle = online_latencies(c, ONLINE_SAMPLES)

    # When 20,000 inputs go up as one JSON Lines upload through nginx
    started = time.monotonic()
    batch = c.submit_batch("digits", body)
    accepted_s = time.monotonic() - started
    assert batch["total"] == ITEMS and batch["status"] == "running"

    # and online jobs are sent while the batch runs
    during = online_latencies(c, ONLINE_SAMPLES)
    mid = c.batch(batch["id"])
    done = wait_batch(c, batch["id"])
    total_s = time.monotonic() - started

    # Then the batch completed, every item succeeded, none twice
    assert done["status"] == "completed", done
    assert done["counts"]["succeeded"] == ITEMS, done["counts"]
    # and the online jobs were measured while it ran, and kept their latency
    assert mid["counts"]["queued"] + mid["counts"]["running"] > 0, "batch ended too soon"
    idle_p50, busy_p50 = statistics.median(idle), statistics.median(during)
    with db.connect() as conn:
        span = conn.execute(
            select(func.min(Job.started_at), func.max(Job.completed_at)).where(
                Job.batch_id == uuid.UUID(batch["id"])
            )
        ).one()
        version_id = conn.scalar(select(Batch.version_id).where(Batch.id == uuid.UUID(batch["id"])))
    run_s = (span[1] - span[0]).total_seconds()
    print(
        f"\nbatch of {ITEMS}: accepted in {accepted_s:.1f} s ({len(body) / 1e6:.1f} MB), "
        f"run in {run_s:.1f} s ({ITEMS / run_s:.0f} items/s), {total_s:.1f} s submit to done; "
        f"progress when the online sample ended: {mid['done']}/{ITEMS}"
        f"\nonline p50 idle {idle_p50:.1f} ms, during the batch {busy_p50:.1f} ms "
        f"(x{busy_p50 / idle_p50:.2f}); p90 idle {statistics.quantiles(idle, n=10)[-1]:.1f} ms, "
        f"during {statistics.quantiles(during, n=10)[-1]:.1f} ms"
    )
    # Generous: two shared cores also run the batch worker, Postgres and nginx.
    assert busy_p50 <= 2 * idle_p50 + 20, (idle_p50, busy_p50)

    # Then the results stream back in input order, labelled as this version predicts here
    out = io.BytesIO()
    started = time.monotonic()
    assert c.batch_results(batch["id"], out) == ITEMS
    download_s = time.monotonic() - started
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [line["index"] for line in lines] == list(range(ITEMS))
    expected = in_process_labels(settings, version_id, inputs)
    got = [line["output"]["label"] for line in lines]
    mismatched = [i for i, (a, b) in enumerate(zip(got, expected, strict=True)) if a != b]
    print(f"results downloaded in {download_s:.1f} s; {len(mismatched)} labels differ")
    assert mismatched == []


def test_killing_the_batch_worker_mid_batch_loses_nothing_and_duplicates_nothing(
    up: UpStack, keys: Keys, db: Any, settings: Settings
) -> None:
    c = client(up, keys.alice)
    count = 6000
    batch = c.submit_batch("digits", jsonl(varied_inputs(count)))
    # Given a batch under way on the batch worker, a chunk of it claimed (running)
    deadline = time.monotonic() + 120
    while (now := c.batch(batch["id"]))["done"] < 500 or not now["counts"]["running"]:
        assert time.monotonic() < deadline, now
        assert now["status"] == "running", "the batch ended before the worker could be killed"
        time.sleep(0.01)

    # When the batch worker is killed (its whole process tree, as the OOM killer would)
    killed = kill_tree(up.program_pid("workers:batch-1"))
    at = c.batch(batch["id"])

    # Then supervisord's new batch worker and the reconciler finish the batch
    done = wait_batch(c, batch["id"], timeout_s=240)
    assert done["status"] == "completed", done
    assert done["counts"]["succeeded"] == count, done["counts"]
    # with one job per item, each stored once
    with db.connect() as conn:
        row = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT batch_index), min(batch_index), max(batch_index),"
                " count(*) FILTER (WHERE attempts > 1), max(attempts)"
                " FROM jobs WHERE batch_id = :b"
            ),
            {"b": batch["id"]},
        ).one()
    assert tuple(row[:4]) == (count, count, 0, count - 1)
    # and only what the killed worker held was run again: one chunk at most, never done items
    assert row[4] <= settings.batches.batch_chunk_size, row
    out = io.BytesIO()
    assert c.batch_results(batch["id"], out) == count
    indexes = [json.loads(line)["index"] for line in out.getvalue().splitlines()]
    assert indexes == list(range(count))
    print(
        f"\nkilled batch-1 (pids {killed}) at {at['done']}/{count} done, "
        f"{at['counts']['running']} running; "
        f"{row[4]} items ran again (at most {row[5]} attempts); all {count} succeeded once"
    )


def test_bad_uploads_through_nginx_are_4xx_and_create_nothing(
    up: UpStack, keys: Keys, db: Any
) -> None:
    c = client(up, keys.alice)
    good = jsonl(varied_inputs(5000))

    def batches() -> int:
        with db.connect() as conn:
            return int(conn.scalar(select(func.count()).select_from(Batch)) or 0)

    before = batches()
    first, second, _ = good.split(b"\n", 2)
    # a bad line early in a 1.8 MB upload: answered early, through nginx's streaming
    with pytest.raises(InvalidInput, match="line 3: is not valid JSON"):
        c.submit_batch("digits", first + b"\n" + second + b"\n{oops\n" + good)
    with pytest.raises(InvalidInput, match="line 2: /pixels must have at least 64 items"):
        c.submit_batch("digits", first + b'\n{"pixels": [0]}\n' + good)
    with pytest.raises(InvalidInput, match="no model named"):
        c.submit_batch("no-such-model", good)
    with pytest.raises(InvalidInput, match="no inputs"):
        c.submit_batch("digits", b"")
    # over INFERQ_MAX_BATCH_BYTES: nginx refuses it before the API sees a byte
    with pytest.raises(PayloadTooLarge, match=f"larger than {MAX_BATCH_BYTES} bytes"):
        c.submit_batch("digits", good * (MAX_BATCH_BYTES // len(good) + 1))
    # and a plain job body still has the small limit
    headers = {"Authorization": f"Bearer {keys.alice}", "Content-Type": "application/json"}
    big_job = b'{"model": "digits", "input": {"pixels": [' + b"0," * 600_000 + b"0]}}"
    assert (
        requests.post(up.url + "/v1/jobs", data=big_job, headers=headers, timeout=30).status_code
        == 413
    )
    assert batches() == before
