"""Every process's /metrics under a small load, as Prometheus would scrape them: an API node
(gunicorn, two processes adding up through the multiprocess directory), a worker and the
scheduler. The counters move by exactly what was submitted; every metric the alert rules
read is there; the JSON logs tie request ids to job ids from the API to the worker."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import requests

from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.e2e.conftest import Stack
from tests.factories import holdout
from tests.processes import ServiceProcess, free_port, wait_for_http, wait_for_log
from tests.prometheus import Scrape, rule_expressions
from tests.unit.test_prometheus_rules import BUILTIN, recorded, used_metrics

pytestmark = pytest.mark.e2e

JOBS = 24


@dataclasses.dataclass
class Observed:
    """A stack whose worker and scheduler serve metrics on known ports."""

    stack: Stack
    worker_metrics: str
    scheduler_metrics: str

    @property
    def api_metrics(self) -> str:
        return self.stack.url + "/metrics"

    def scrape(self) -> dict[str, Scrape]:
        return {
            "api": Scrape.get(self.api_metrics),
            "worker": Scrape.get(self.worker_metrics),
            "scheduler": Scrape.get(self.scheduler_metrics),
        }


def start_observed(settings: Settings, logs: Path) -> Observed:
    settings = settings.replace(metrics_interval_s=1.0, task_events=True)
    port, worker_port, scheduler_port = free_port(), free_port(), free_port()
    api = ServiceProcess("api", ["api", "--port", str(port)], settings, logs)
    scheduler = ServiceProcess(
        "scheduler", ["beat", "--metrics-port", str(scheduler_port)], settings, logs
    )
    stack = Stack(settings, f"http://127.0.0.1:{port}", logs, api, scheduler)
    try:
        wait_for_http(stack.url + "/readyz?scope=node", api)
        name = f"obs-{settings.namespace}"
        worker = ServiceProcess(
            name, ["worker", "--name", name, "--metrics-port", str(worker_port)], settings, logs
        )
        stack.workers.append(worker)
        wait_for_log(worker, " ready.", timeout=90)
        wait_for_http(f"http://127.0.0.1:{scheduler_port}/metrics", scheduler)
    except BaseException:
        stack.stop()
        raise
    return Observed(
        stack,
        f"http://127.0.0.1:{worker_port}/metrics",
        f"http://127.0.0.1:{scheduler_port}/metrics",
    )


@pytest.fixture
def observed(
    settings: Settings, digits_version: int, keys: Keys, tmp_path: Path
) -> Iterator[Observed]:
    found = start_observed(settings, tmp_path)
    yield found
    found.stack.stop()


def settled(scrape: Scrape) -> bool:
    """The scheduler sees the worker, and no online job open."""
    return (
        scrape.value("inferq_workers_live", lane="online") == 1
        and scrape.value("inferq_queue_depth", lane="online") == 0
        and scrape.value("inferq_jobs_running", lane="online") == 0
    )


def wait_for_scheduler(observed: Observed, done: Callable[[Scrape], bool]) -> Scrape:
    """The scheduler's scrape once ``done`` holds for it."""
    deadline = time.monotonic() + 20
    while True:
        scrape = Scrape.get(observed.scheduler_metrics)
        if settled(scrape) and done(scrape):
            return scrape
        assert time.monotonic() < deadline, scrape.text[-3000:]
        time.sleep(0.5)


def test_counters_of_every_process_move_by_the_jobs_submitted(
    observed: Observed, keys: Keys
) -> None:
    client = observed.stack.client(keys.alice)
    wait_for_scheduler(observed, lambda scrape: True)
    before = observed.scrape()
    passes = "inferq_reconciler_passes_total"
    judged = "inferq_model_feedback_judged"

    # When 24 jobs are submitted and waited for, and one of them gets feedback
    pairs = holdout(JOBS)
    with ThreadPoolExecutor(max_workers=8) as pool:
        submitted = list(pool.map(lambda pair: client.submit("digits", pair[0]), pairs))
        finished = list(pool.map(lambda job: client.wait(job["id"], timeout_s=60), submitted))
    assert [job["status"] for job in finished] == ["succeeded"] * JOBS
    client.feedback(finished[0]["id"], label=pairs[0][1])
    # once the scheduler has reconciled and measured quality since (it does every few s)
    wait_for_scheduler(
        observed,
        lambda scrape: (
            scrape.value(passes) > before["scheduler"].value(passes)
            and scrape.value(judged, model="digits")
            > before["scheduler"].value(judged, model="digits")
        ),
    )
    after = observed.scrape()

    def delta(process: str, name: str, **labels: str) -> float:
        return after[process].value(name, **labels) - before[process].value(name, **labels)

    # Then the API node (both of its processes) counted every submit
    assert delta("api", "inferq_jobs_submitted_total", model="digits", lane="online") == JOBS
    requests_total = "inferq_http_requests_total"
    assert delta("api", requests_total, method="POST", route="/v1/jobs", status="202") == JOBS
    assert delta("api", requests_total, route="/v1/jobs/<job_id>", status="200") >= JOBS
    # the worker ran every job, and saw each one's wait
    assert delta("worker", "inferq_worker_jobs_total", model="digits", status="succeeded") == JOBS
    assert delta("worker", "inferq_worker_queue_wait_seconds_count", model="digits") == JOBS
    assert delta("worker", "inferq_worker_batch_size_sum", model="digits") == JOBS
    assert after["worker"].value("inferq_worker_model_load_seconds_count", model="digits") == 1
    # the scheduler kept reconciling, counted the new feedback, and sees Postgres, Redis,
    # the broker and the worker
    assert delta("scheduler", passes, outcome="ok") > 0
    assert delta("scheduler", judged, model="digits") == 1
    for dependency in ("database", "redis", "broker"):
        assert after["scheduler"].value("inferq_dependency_up", dependency=dependency) == 1
    assert after["scheduler"].value("inferq_workers_live", lane="online") == 1

    # Every metric the alert rules read is in these scrapes, and no job id is a label value
    exported = set().union(*(scrape.names() for scrape in after.values()))
    assert used_metrics(rule_expressions()) - exported - recorded() - BUILTIN == set()
    ids = [job["id"] for job in finished]
    assert not any(job_id in scrape.text for scrape in after.values() for job_id in ids)


def log_lines(process: ServiceProcess) -> list[dict[str, object]]:
    lines = []
    for line in process.log().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            lines.append(record)
    return lines


class Events:
    """Celery task events on the deployment's event exchange, as Flower receives them."""

    def __init__(self, settings: Settings) -> None:
        from inferq.core.broker import make_celery

        self.app = make_celery(settings)
        self.seen: list[dict[str, Any]] = []
        self.connection = self.app.connection_for_read()
        self.receiver = self.app.events.Receiver(self.connection, handlers={"*": self.seen.append})
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        self.receiver.capture(limit=None, timeout=None, wakeup=False)

    def __enter__(self) -> Events:
        self.thread.start()
        # events published before the receiver's queue is bound are lost: send probes until
        # one comes back, then the receiver sees whatever the API and workers send
        self.probe("test-probe")
        return self

    def probe(self, name: str) -> None:
        """Send ``name`` until it comes back: what was published before it has had its time."""
        deadline = time.monotonic() + 30
        with self.app.events.default_dispatcher(hostname="probe@test") as dispatcher:
            while name not in self.types():
                assert time.monotonic() < deadline, f"the event receiver never got {name}"
                dispatcher.send(name)
                time.sleep(0.2)

    def __exit__(self, *_: object) -> None:
        self.receiver.should_stop = True
        self.thread.join(timeout=5)
        self.connection.release()

    def types(self, task_id: str | None = None) -> set[str]:
        return {
            str(e.get("type"))
            for e in list(self.seen)
            if task_id is None or e.get("uuid") == task_id
        }


def test_task_events_are_off_unless_asked_for(redis_stack: Stack, keys: Keys) -> None:
    """Off by default, as in Celery (four broker messages per job that nothing else reads:
    BENCHMARKS.md). Catches: the API or a worker sending task events it was not asked for
    (tried: the default left on: task-sent, task-received, task-started, task-succeeded)."""
    assert not Settings().observability.task_events
    assert not redis_stack.settings.observability.task_events
    with Events(redis_stack.settings) as events:
        job = redis_stack.client(keys.alice).submit("digits", holdout(1)[0][0], wait=20)
        assert job["status"] == "succeeded", job
        time.sleep(1.0)  # the worker's events, had it sent any, would follow its answer
        events.probe("test-probe-after")
    assert {t for t in events.types() if t.startswith("task-")} == set(), events.types()


def test_one_request_id_and_job_id_follow_a_job_through_api_and_worker_logs(
    observed: Observed, keys: Keys
) -> None:
    request_id = f"trace-{uuid.uuid4().hex[:12]}"
    with Events(observed.stack.settings) as events:
        response = requests.post(
            observed.stack.url + "/v1/jobs",
            json={"model": "digits", "input": holdout(1)[0][0]},
            headers={
                "Authorization": f"Bearer {keys.alice}",
                "X-Request-ID": request_id,
                "Prefer": "wait=20",
            },
            timeout=30,
        )
        deadline = time.monotonic() + 10
        while not {"task-sent", "task-received", "task-succeeded"} <= events.types():
            assert time.monotonic() < deadline, events.types()
            time.sleep(0.2)
    # Celery's task events flow (what Flower shows): sent by the API, received, started and
    # succeeded on the worker, for the same message
    sent = [e for e in events.seen if e.get("type") == "task-sent"]
    assert sent and sent[-1].get("name") == "inferq.predict"
    lifecycle = {"task-received", "task-started", "task-succeeded"}
    assert lifecycle <= events.types(str(sent[-1]["uuid"]))
    assert response.status_code == 200 and response.headers["X-Request-ID"] == request_id
    job_id = response.json()["id"]

    deadline = time.monotonic() + 10  # an API node writes its log lines out every second
    while not (
        access := [r for r in log_lines(observed.stack.api) if r.get("request_id") == request_id]
    ):
        assert time.monotonic() < deadline, "the API's access log never named the request"
        time.sleep(0.2)
    assert access[0]["job_id"] == job_id and access[0]["status"] == 200
    deadline = time.monotonic() + 10
    while not any(job_id in (r.get("job_ids") or []) for r in log_lines(observed.stack.workers[0])):
        assert time.monotonic() < deadline, "the worker's batch log never named the job"
        time.sleep(0.2)
