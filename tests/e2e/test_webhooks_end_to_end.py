"""Webhooks through real processes: the API accepts a job with a webhook, a worker runs the
job and, on the webhooks lane, delivers it to a receiver on loopback that fails twice first."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.e2e.conftest import Stack, start_stack
from tests.factories import holdout
from tests.security import Receiver, make_key
from tests.services import wipe_redis

pytestmark = pytest.mark.e2e


@pytest.fixture
def hook_stack(
    settings: Settings, digits_version: int, keys: Keys, tmp_path: Path
) -> Iterator[Stack]:
    hooked = settings.replace(
        namespace=settings.namespace + "wh",  # its own queues: no other test's deliveries
        worker_lanes="online,webhooks",
        webhook_allowlist="127.0.0.1",
        webhook_backoff_s=0.3,
        webhook_max_attempts=4,
    )
    stack = start_stack(hooked, tmp_path, workers=1)
    yield stack
    stack.stop()
    wipe_redis(hooked.effective_redis_url, hooked.namespace)


def test_a_webhook_is_retried_with_backoff_until_the_receiver_takes_it(
    hook_stack: Stack, settings: Settings, keys: Keys
) -> None:
    auth = {"Authorization": f"Bearer {keys.alice}"}
    admin = {"Authorization": f"Bearer {make_key(settings, 'alice', ['admin'])}"}
    secret = requests.get(f"{hook_stack.url}/v1/webhooks/secret", headers=admin, timeout=10)
    with Receiver(fail_first=2).running() as receiver:
        receiver.secret = secret.json()["secret"]
        pixels, label = holdout(1)[0]
        submitted = requests.post(
            f"{hook_stack.url}/v1/jobs",
            json={"model": "digits", "input": pixels, "webhook": receiver.url},
            headers=auth,
            timeout=10,
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]
        assert receiver.arrived.wait(60), hook_stack.workers[0].log()[-3000:]
    assert len(receiver.calls) == 3
    assert all(call["valid"] for call in receiver.calls)
    assert receiver.calls[-1]["body"].find(f'"label":{label}'.encode()) > 0
    log = requests.get(f"{hook_stack.url}/v1/jobs/{job_id}/webhooks", headers=auth, timeout=10)
    deadline = time.monotonic() + 10
    while log.json()["status"] != "delivered" and time.monotonic() < deadline:
        time.sleep(0.2)
        log = requests.get(f"{hook_stack.url}/v1/jobs/{job_id}/webhooks", headers=auth, timeout=10)
    body = log.json()
    assert body["status"] == "delivered"
    assert [d["status_code"] for d in body["deliveries"]] == [500, 500, 200]
    stamps = [d["created_at"] for d in body["deliveries"]]
    assert stamps == sorted(stamps)
