"""Batches through the API on real Postgres and Redis, their items run by an in-process worker."""

from __future__ import annotations

import csv
import io
import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import func, select

from api.app import create_app
from db.batches import progress
from db.jobs import claim_jobs
from db.tables import Batch, Job
from inferq.core.broker import make_celery
from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.factories import holdout
from tests.integration.conftest import Caller
from workers.context import WorkerContext
from workers.runner import run_batch

JSONL = {"Content-Type": "application/x-ndjson"}


@pytest.fixture
def ctx(settings: Settings, digits_version: int) -> Iterator[WorkerContext]:
    context = WorkerContext.create(
        settings, f"batch-{uuid.uuid4().hex[:6]}@test", make_celery(settings)
    )
    yield context
    context.redis.close()


def jsonl(inputs: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(item) + "\n" for item in inputs).encode()


def upload(caller: Caller, body: bytes, model: str = "digits", **headers: str) -> Any:
    return caller.http.post(
        f"/v1/batches?model={model}", data=body, headers=caller.headers({**JSONL, **headers})
    )


def item_ids(ctx: WorkerContext, batch_id: str) -> list[str]:
    with ctx.sessions() as session:
        rows = session.scalars(
            select(Job.id).where(Job.batch_id == uuid.UUID(batch_id)).order_by(Job.batch_index)
        )
        return [str(job_id) for job_id in rows]


def run_all(ctx: WorkerContext, ids: list[str], chunk: int = 256) -> None:
    for start in range(0, len(ids), chunk):
        run_batch(ctx, ids[start : start + chunk])


def predictions(ctx: WorkerContext, version_id: int, inputs: list[dict[str, Any]]) -> list[int]:
    """Labels from the version's own handler, loaded in this process."""
    handler = ctx.runtime.handler(version_id)
    return [out["label"] for out in handler.predict([handler.prepare(i) for i in inputs])]


def counts(ctx: WorkerContext) -> tuple[int, int]:
    """Batches and batch items in the database (to prove nothing was half-created)."""
    with ctx.sessions() as session:
        batches = session.scalar(select(func.count()).select_from(Batch)) or 0
        items = session.scalar(select(func.count()).where(Job.batch_id.is_not(None))) or 0
    return batches, items


def test_a_jsonl_batch_runs_on_the_batch_lane_and_its_results_come_back_in_order(
    alice: Caller, ctx: WorkerContext
) -> None:
    # Given 300 digits as JSON Lines
    pairs = holdout(300)
    inputs = [pair[0] for pair in pairs]

    # When they are submitted as a batch
    created = upload(alice, jsonl(inputs))

    # Then the batch exists whole, every item queued on the batch lane, in input order
    assert created.status_code == 202, created.get_json()
    batch = created.get_json()
    assert created.headers["Location"].endswith(f"/v1/batches/{batch['id']}")
    assert (batch["status"], batch["total"], batch["lane"]) == ("running", 300, "batch")
    assert batch["counts"]["queued"] == 300 and batch["done"] == 0
    ids = item_ids(ctx, batch["id"])
    with ctx.sessions() as session:
        jobs = session.scalars(select(Job).where(Job.id.in_([uuid.UUID(i) for i in ids])))
        by_id = {str(job.id): job for job in jobs}
    assert [by_id[i].batch_index for i in ids] == list(range(300))
    assert {by_id[i].lane for i in ids} == {"batch"}
    assert [by_id[i].input for i in ids] == inputs

    # When a worker runs part of it, progress counts it with a throughput and an ETA
    run_all(ctx, ids[:100])
    half = alice.get(f"/v1/batches/{batch['id']}").get_json()
    assert half["counts"]["succeeded"] == 100 and half["counts"]["queued"] == 200
    assert half["status"] == "running" and half["throughput_per_s"] > 0 and half["eta_s"] > 0

    # and the rest
    run_all(ctx, ids[100:])
    done = alice.get(f"/v1/batches/{batch['id']}").get_json()
    assert done["status"] == "completed" and done["completed_at"] and done["eta_s"] == 0
    assert done["counts"] == {
        "queued": 0,
        "running": 0,
        "succeeded": 300,
        "failed": 0,
        "canceled": 0,
    }

    # Then the results are every line, in input order, labelled as the version predicts
    results = alice.get(f"/v1/batches/{batch['id']}/results")
    assert results.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in results.get_data(as_text=True).splitlines()]
    assert [line["index"] for line in lines] == list(range(300))
    expected = predictions(ctx, by_id[ids[0]].version_id, inputs)
    assert [line["output"]["label"] for line in lines] == expected
    assert sum(label == true for label, (_, true) in zip(expected, pairs, strict=True)) >= 285
    # and as CSV
    table = list(
        csv.reader(
            io.StringIO(
                alice.get(f"/v1/batches/{batch['id']}/results?format=csv").get_data(as_text=True)
            )
        )
    )
    assert table[0] == ["index", "status", "output", "error"]
    assert [int(r[0]) for r in table[1:]] == list(range(300))
    assert [json.loads(r[2])["label"] for r in table[1:]] == expected


def test_the_json_form_and_a_bad_item_that_fails_alone(alice: Caller, ctx: WorkerContext) -> None:
    # Given a JSON body whose second input passes the schema but is no decodable image
    good = [pair[0] for pair in holdout(3)]
    inputs = [good[0], {"image": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"}, good[1], good[2]]

    created = alice.post("/v1/batches", {"model": "digits", "inputs": inputs})

    assert created.status_code == 202, created.get_json()
    batch_id = created.get_json()["id"]
    run_all(ctx, item_ids(ctx, batch_id))
    # Then the bad item failed with its error and the others still completed
    done = alice.get(f"/v1/batches/{batch_id}").get_json()
    assert done["status"] == "completed"
    assert (done["counts"]["succeeded"], done["counts"]["failed"]) == (3, 1)
    lines = [
        json.loads(x)
        for x in alice.get(f"/v1/batches/{batch_id}/results").get_data(as_text=True).splitlines()
    ]
    assert [line["status"] for line in lines] == ["succeeded", "failed", "succeeded", "succeeded"]
    assert lines[1]["error"]["type"] == "invalid-input" and lines[1]["output"] is None


GOOD = json.dumps({"pixels": [0] * 64})


@pytest.mark.parametrize(
    ("body", "status", "detail"),
    [
        pytest.param(
            f"{GOOD}\n{GOOD}\n{{not json\n{GOOD}\n",
            422,
            "line 3: is not valid JSON",
            id="malformed",
        ),
        pytest.param(
            f'{GOOD}\n{{"pixels": [1, 2, 3]}}\n',
            422,
            "line 2: /pixels must have at least 64 items",
            id="schema",
        ),
        pytest.param(f"{GOOD}\n[1, 2]\n", 422, "line 2: must be a JSON object", id="not-an-object"),
        pytest.param(f"{GOOD}\n\n{GOOD}\n", 422, "line 2: is empty", id="blank-line"),
        pytest.param(f'{GOOD}\n{{"pixels": [NaN]}}\n', 422, "line 2: is not valid JSON", id="nan"),
        pytest.param(
            f'{GOOD}\n{{"pixels": [1e999]}}\n',
            422,
            "line 2: holds a number out of range",
            id="overflow",
        ),
        pytest.param(f'{GOOD}\n{{"image": "a\\u0000b"}}\n', 422, "line 2: holds a NUL", id="nul"),
        pytest.param("", 422, "holds no inputs", id="empty"),
        pytest.param("\n\n", 422, "holds no inputs", id="only-newlines"),
    ],
)
def test_a_bad_upload_is_a_clear_problem_naming_the_line_and_creates_nothing(
    alice: Caller, ctx: WorkerContext, body: str, status: int, detail: str
) -> None:
    before = counts(ctx)

    answer = upload(alice, body.encode())

    assert answer.status_code == status, answer.get_json()
    assert answer.mimetype == "application/problem+json"
    assert detail in answer.get_json()["detail"], answer.get_json()
    assert counts(ctx) == before


def test_limits_wrong_models_and_types_are_4xx_and_create_nothing(
    settings: Settings, keys: Keys, ctx: WorkerContext
) -> None:
    small = settings.replace(max_batch_bytes=2000, max_batch_items=3, max_body_bytes=600)
    alice = Caller(create_app(small).test_client(), keys.alice)
    before = counts(ctx)
    good = GOOD.encode() + b"\n"

    too_big = upload(alice, good * 20)  # a Content-Length over the limit: refused unread
    too_many = upload(alice, good * 4)
    too_long = upload(alice, b'{"image": "' + b"A" * 700 + b'"}\n')
    wrong_model = upload(alice, good, model="no-such-model")
    no_model = alice.http.post("/v1/batches", data=good, headers=alice.headers(JSONL))
    wrong_type = alice.http.post(
        "/v1/batches?model=digits", data=good, headers=alice.headers({"Content-Type": "text/plain"})
    )
    json_bad_item = alice.post(
        "/v1/batches", {"model": "digits", "inputs": [json.loads(GOOD), {"pixels": []}]}
    )
    json_wrong_model = alice.post("/v1/batches", {"model": "nope", "inputs": [json.loads(GOOD)]})
    json_empty = alice.post("/v1/batches", {"model": "digits", "inputs": []})

    assert too_big.status_code == 413 and too_big.mimetype == "application/problem+json"
    assert too_many.status_code == 413 and "line 4" in too_many.get_json()["detail"]
    assert (
        too_long.status_code == 413
        and "line 1 is longer than 600 bytes" in too_long.get_json()["detail"]
    )
    assert wrong_model.status_code == 422 and "no model named" in wrong_model.get_json()["detail"]
    assert no_model.status_code == 422 and no_model.get_json()["errors"][0]["pointer"] == "?model"
    assert wrong_type.status_code == 415
    assert json_bad_item.status_code == 422
    assert json_bad_item.get_json()["errors"][0]["pointer"] == "/inputs/1/pixels"
    assert json_wrong_model.status_code == 422
    assert json_empty.status_code == 422
    assert counts(ctx) == before


def test_a_batch_is_its_tenants_alone_and_scopes_apply(
    alice: Caller, bob: Caller, http: Any, keys: Keys
) -> None:
    batch_id = upload(alice, (GOOD + "\n").encode()).get_json()["id"]

    for path in (f"/v1/batches/{batch_id}", f"/v1/batches/{batch_id}/results"):
        assert bob.get(path).status_code == 404
    assert bob.post(f"/v1/batches/{batch_id}/cancel").status_code == 404
    assert alice.get("/v1/batches/not-a-uuid").status_code == 400
    assert alice.get(f"/v1/batches/{uuid.uuid4()}").status_code == 404
    assert alice.get(f"/v1/batches/{batch_id}/results?format=xml").status_code == 400
    read_only, submit_only = (
        Caller(http, keys.alice_read_only),
        Caller(http, keys.alice_submit_only),
    )
    assert upload(read_only, (GOOD + "\n").encode()).status_code == 403
    assert submit_only.get(f"/v1/batches/{batch_id}").status_code == 403
    assert read_only.get(f"/v1/batches/{batch_id}").status_code == 200


def test_canceling_a_batch_stops_its_queued_items_and_discards_running_ones(
    alice: Caller, ctx: WorkerContext
) -> None:
    # Given a batch of 40: 10 done, 5 held by another worker, 25 queued
    batch_id = upload(alice, jsonl([pair[0] for pair in holdout(40)])).get_json()["id"]
    ids = item_ids(ctx, batch_id)
    run_batch(ctx, ids[:10])
    with ctx.sessions.begin() as session:
        claim_jobs(session, ids[10:15], "elsewhere@test")

    # When it is canceled
    canceled = alice.post(f"/v1/batches/{batch_id}/cancel")

    # Then the queued items are canceled at once and never run, the done ones keep their
    # results, and the running ones are marked
    assert canceled.status_code == 200, canceled.get_json()
    body = canceled.get_json()
    assert body["status"] == "canceled" and body["canceled_at"]
    assert body["counts"] == {
        "queued": 0,
        "running": 5,
        "succeeded": 10,
        "failed": 0,
        "canceled": 25,
    }
    assert run_batch(ctx, ids[15:]) == []
    with ctx.sessions() as session:
        assert progress(session, uuid.UUID(batch_id)).counts["canceled"] == 25
    # canceling again changes nothing
    assert alice.post(f"/v1/batches/{batch_id}/cancel").get_json()["counts"] == body["counts"]


def test_a_completed_batch_cannot_be_canceled(alice: Caller, ctx: WorkerContext) -> None:
    batch_id = upload(alice, jsonl([pair[0] for pair in holdout(3)])).get_json()["id"]
    run_all(ctx, item_ids(ctx, batch_id))

    answer = alice.post(f"/v1/batches/{batch_id}/cancel")

    assert answer.status_code == 409
    assert alice.get(f"/v1/batches/{batch_id}").get_json()["status"] == "completed"


def test_batches_and_online_jobs_share_the_result_cache(
    settings: Settings, keys: Keys, digits_version: int
) -> None:
    cached_settings = settings.replace(cache_ttl_s=60)
    alice = Caller(create_app(cached_settings).test_client(), keys.alice)
    ctx = WorkerContext.create(cached_settings, "batch-cache@test", make_celery(cached_settings))
    seen, fresh, later = ({"pixels": [float(v % 17) for v in range(i, i + 64)]} for i in (3, 5, 7))
    # Given an input an online job has answered
    online = alice.post("/v1/jobs", {"model": "digits", "input": seen}).get_json()
    run_batch(ctx, [online["id"]])

    # When a batch holds it and another input
    batch = upload(alice, jsonl([fresh, seen, later])).get_json()

    # Then the known one is born finished from the cache, and only the others queue
    assert batch["cached"] == 1 and batch["counts"]["succeeded"] == 1
    assert batch["counts"]["queued"] == 2
    run_all(ctx, item_ids(ctx, batch["id"]))
    lines = [
        json.loads(x)
        for x in alice.get(f"/v1/batches/{batch['id']}/results").get_data(as_text=True).splitlines()
    ]
    assert all(line["status"] == "succeeded" for line in lines)
    # and what the batch's worker computed answers an online job from the cache
    again = alice.post("/v1/jobs", {"model": "digits", "input": later})
    assert again.status_code == 200 and again.get_json()["cached"] is True
    assert again.get_json()["output"] == lines[2]["output"]
    ctx.redis.close()
