"""The lanes besides online predictions, on RabbitMQ, with a real worker process: an offline
batch (batch lane), a webhook delivery retried once (webhooks lane), a shadow copy (the
online lane's other task) and a training run (training lane).

One worker process consumes all four lanes in a namespace of its own (its own quorum queues);
the API is an in-process app publishing to the same RabbitMQ. Each test sends one piece of
work: enough to show the lane flows end to end on this broker.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from kombu import Connection
from sqlalchemy import select

from api.app import create_app
from db.tables import ShadowResult
from inferq.cli.common import db_session
from inferq.core.settings import LANES, Settings
from tests.conftest import Keys
from tests.factories import (
    digits_variants,
    experiment_model,
    holdout,
    leave_no_pending_rollout,
)
from tests.integration.conftest import Caller
from tests.processes import ServiceProcess, wait_for_log
from tests.security import Receiver, make_key
from tests.services import delete_amqp_queues, wipe_redis

pytestmark = pytest.mark.rabbitmq

JSONL = {"Content-Type": "application/x-ndjson"}
FAST_TRAINING = {"train_options": {"epochs": 12}}


@dataclasses.dataclass(frozen=True)
class Lanes:
    """A namespace on RabbitMQ whose four lanes one worker process consumes."""

    settings: Settings
    worker: ServiceProcess

    def log(self) -> str:
        """The end of the worker's log, for failure messages."""
        return self.worker.log()[-3000:]


@pytest.fixture(scope="module")
def lanes(
    amqp_settings: Settings, digits_version: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Lanes]:
    own = amqp_settings.replace(
        namespace=f"{amqp_settings.namespace}ln{uuid.uuid4().hex[:4]}",
        worker_lanes="online,batch,webhooks,training",
        webhook_allowlist="127.0.0.1",
        webhook_backoff_s=0.3,
        webhook_max_attempts=4,
    )
    name = f"lanes-{uuid.uuid4().hex[:6]}"
    worker = ServiceProcess(
        name, ["worker", "--name", name], own, tmp_path_factory.mktemp("amqp-lanes")
    )
    try:
        wait_for_log(worker, " ready.", timeout=90)
        yield Lanes(own, worker)
    finally:
        worker.stop()
        delete_amqp_queues(own.broker_url or "", own.namespace, LANES)
        with Connection(own.broker_url, connect_timeout=5) as conn:
            conn.channel().queue_delete(f"{own.namespace}.dead")
            conn.channel().exchange_delete(f"{own.namespace}.dead")
        wipe_redis(own.effective_redis_url, own.namespace)


@pytest.fixture(scope="module")
def alice(lanes: Lanes, keys: Keys) -> Caller:
    """An in-process API on the lanes' settings: it publishes to the same RabbitMQ."""
    return Caller(create_app(lanes.settings).test_client(), keys.alice)


@pytest.fixture(scope="module")
def operator(alice: Caller, operator_key: str) -> Caller:
    return Caller(alice.http, operator_key)


def eventually(read: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float = 60) -> Any:
    """``read()`` until ``done`` says so, or the time is up; the last value read."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    return value


def test_a_batch_runs_on_the_batch_lane_on_rabbitmq(alice: Caller, lanes: Lanes) -> None:
    """Catches: a batch's items never reaching a worker on RabbitMQ (tried: the API's publish
    of the chunks in api/services/batches.py left out: the batch stays running)."""
    # Given five digits as JSON Lines
    pairs = holdout(5)
    body = "".join(json.dumps(item) + "\n" for item, _ in pairs).encode()

    # When they are submitted as a batch
    created = alice.http.post("/v1/batches?model=digits", data=body, headers=alice.headers(JSONL))
    assert created.status_code == 202, created.get_json()
    batch_id = created.get_json()["id"]
    assert created.get_json()["lane"] == "batch"

    # Then the worker runs it, and the results come back in order
    done = eventually(
        lambda: alice.get(f"/v1/batches/{batch_id}").get_json(),
        lambda b: b["status"] != "running",
    )
    assert done["status"] == "completed", (done, lanes.log())
    assert done["counts"]["succeeded"] == 5
    results = alice.get(f"/v1/batches/{batch_id}/results").get_data(as_text=True)
    lines = [json.loads(line) for line in results.splitlines()]
    assert [line["index"] for line in lines] == list(range(5))
    assert (
        sum(line["output"]["label"] == label for line, (_, label) in zip(lines, pairs, strict=True))
        >= 4
    )


def test_a_webhook_is_delivered_on_rabbitmq_after_one_retry(alice: Caller, lanes: Lanes) -> None:
    """Catches: a delivery, or its retry after a failed call (a countdown message on a quorum
    queue), not flowing on RabbitMQ (tried: the task's ``self.retry`` in
    workers/tasks/webhooks.py left out: the receiver gets the failed call and nothing more)."""
    secret = Caller(alice.http, make_key(lanes.settings, "alice", ["admin"])).get(
        "/v1/webhooks/secret"
    )
    with Receiver(fail_first=1).running() as receiver:
        receiver.secret = secret.get_json()["secret"]
        # Given a job with a webhook whose receiver fails its first call
        pixels, label = holdout(1)[0]
        submitted = alice.post(
            "/v1/jobs", {"model": "digits", "input": pixels, "webhook": receiver.url}
        )
        assert submitted.status_code == 202, submitted.get_json()
        job_id = submitted.get_json()["id"]

        # Then the worker runs the job and delivers it, again after the failure
        assert receiver.arrived.wait(60), ("the webhook never arrived", lanes.log())
    assert [call["valid"] for call in receiver.calls] == [True, True]
    assert json.loads(receiver.calls[-1]["body"])["job"]["output"]["label"] == label
    log = eventually(
        lambda: alice.get(f"/v1/jobs/{job_id}/webhooks").get_json(),
        lambda body: body["status"] == "delivered",
        timeout_s=10,
    )
    assert [d["status_code"] for d in log["deliveries"]] == [500, 200], log


def test_a_shadow_copy_runs_on_rabbitmq(alice: Caller, operator: Caller, lanes: Lanes) -> None:
    """Catches: shadow copies not flowing on RabbitMQ, where the ``inferq.shadow`` task shares
    the online queue with the batched predict task (tried: the API's publish in
    api/services/experiments.py ``mirror`` left out: no candidate output is ever stored)."""
    # Given a model with a candidate in shadow
    variants = digits_variants()
    model = experiment_model(lanes.settings, [variants["good"], variants["bad"]], active=1)
    started = operator.post(
        "/v1/experiments",
        {"model": model, "mode": "shadow", "arms": [{"version": 1}, {"version": 2}]},
    )
    assert started.status_code == 201, started.get_json()

    # When a user's job is served
    submitted = alice.post("/v1/jobs", {"model": model, "input": holdout(1)[0][0], "user": "u1"})
    assert submitted.status_code == 202, submitted.get_json()
    job_id = submitted.get_json()["id"]

    # Then the client gets the active version's answer, and the candidate's is stored apart
    job = eventually(
        lambda: alice.get(f"/v1/jobs/{job_id}").get_json(),
        lambda j: j["status"] not in ("queued", "running"),
    )
    assert (job["status"], job["version"]) == ("succeeded", 1), (job, lanes.log())

    def shadows() -> list[tuple[str, Any]]:
        with db_session(lanes.settings) as session:
            rows = session.scalars(
                select(ShadowResult).where(ShadowResult.job_id == uuid.UUID(job_id))
            )
            return [(row.status, row.output) for row in rows]

    stored = eventually(shadows, bool)
    assert len(stored) == 1 and stored[0][0] == "succeeded", (stored, lanes.log())
    assert set(stored[0][1]) == {"label", "probabilities"}


def test_a_training_run_runs_on_rabbitmq(operator: Caller, lanes: Lanes) -> None:
    """Catches: a training run never reaching a worker on RabbitMQ (tried: the retrain
    route's publish in api/routes/training.py left out: the run stays queued)."""
    # Given a model that trains in a few seconds
    good = digits_variants()["good"]
    model = experiment_model(lanes.settings, [good], active=1, config=FAST_TRAINING)

    # When an operator asks for a retraining
    response = operator.post(f"/v1/models/{model}/retrain")
    assert response.status_code == 202, response.get_json()
    run_id = response.get_json()["id"]

    # Then the worker trains and registers a candidate
    try:
        run = eventually(
            lambda: operator.get(f"/v1/training-runs/{run_id}").get_json(),
            lambda r: r["status"] in ("succeeded", "failed"),
            timeout_s=120,
        )
    finally:
        leave_no_pending_rollout(lanes.settings, model)  # no scheduler here decides it
    assert run["status"] == "succeeded", (run, lanes.log())
    assert run["metrics"]["candidate"]["version"] == 2
    versions = operator.get(f"/v1/models/{model}").get_json()["versions"]
    assert [(v["version"], v["status"]) for v in versions] == [(1, "active"), (2, "candidate")]
