"""Submits that arrive together share one predict message on the real broker (api.services.publisher)."""

from __future__ import annotations

import threading
import time

from flask import Flask

from api.state import ApiState
from inferq.core.messages import PREDICT_TASK
from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.factories import holdout
from tests.integration.conftest import Caller, queued_task_args


def queued_predict_messages(settings: Settings, job_ids: set[str]) -> list[list[str]]:
    """The job ids of each predict message on the online queue naming these jobs."""
    messages = queued_task_args(settings, "online", PREDICT_TASK)
    return [list(args[0]) for args in messages if set(args[0]) & job_ids]


def test_concurrent_submits_share_messages_and_each_job_is_queued_once(
    app: Flask, keys: Keys, settings: Settings, no_worker: None
) -> None:
    # Given a broker round trip slowed to 50 ms, so submits pile up behind one in flight
    publisher = app.extensions["inferq"].publisher
    assert isinstance(app.extensions["inferq"], ApiState)
    real = publisher._publish

    def slow(job_ids: list[str], lane: str) -> None:
        time.sleep(0.05)
        real(job_ids, lane)

    publisher._publish = slow
    # When 24 clients submit at once
    accepted: list[str] = []
    statuses: list[int] = []
    lock = threading.Lock()

    def submit(body: dict[str, object]) -> None:
        response = Caller(app.test_client(), keys.alice).post(
            "/v1/jobs", {"model": "digits", "input": body}
        )
        with lock:
            statuses.append(response.status_code)
            accepted.append(response.get_json()["id"])

    threads = [threading.Thread(target=submit, args=(p,)) for p, _ in holdout(24)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)

    # Then every job was accepted and is on the queue exactly once, in fewer messages than jobs
    assert statuses == [202] * 24
    messages = queued_predict_messages(settings, set(accepted))
    queued = [job_id for ids in messages for job_id in ids]
    assert sorted(queued) == sorted(accepted)
    assert len(messages) < 24 and max(len(ids) for ids in messages) > 1, messages
