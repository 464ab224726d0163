"""nginx balances on open connections (``least_conn``), through real nginx in front of two real
API nodes: while one node holds a long-poll, short requests go to the other one.

A long-poll parks a connection on its node for up to ``INFERQ_MAX_WAIT_S``; round-robin would
keep sending every other request to that node regardless.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.e2e.nginx_stack import Nginx, nginx_binary
from tests.factories import holdout
from tests.processes import ServiceProcess, free_port, wait_for_http
from tests.services import wipe_redis

pytestmark = pytest.mark.e2e

SHORT_REQUESTS = 20


@pytest.fixture
def two_nodes_behind_nginx(
    settings: Settings, digits_version: int, tmp_path: Path
) -> Iterator[tuple[Nginx, dict[int, ServiceProcess]]]:
    nginx_binary()  # skip locally (fail in CI) without nginx
    # A namespace no worker consumes: the job below stays queued until the test cancels it.
    own = settings.replace(
        namespace=f"{settings.namespace}lc{uuid.uuid4().hex[:4]}",
        api_processes=1,
        port=free_port(),
        rate_limit_rps=100000,
        rate_limit_burst=100000,
    )
    nodes: dict[int, ServiceProcess] = {}
    proxy = None
    try:
        for name in ("api-1", "api-2"):
            port = free_port()
            nodes[port] = ServiceProcess(name, ["api", "--port", str(port)], own, tmp_path)
        for port, node in nodes.items():
            wait_for_http(f"http://127.0.0.1:{port}/readyz?scope=node", node)
        proxy = Nginx(own, tmp_path / "home", list(nodes))
        yield proxy, nodes
    finally:
        if proxy is not None:
            proxy.stop()
        for node in nodes.values():
            node.stop()
        wipe_redis(own.effective_redis_url, own.namespace)


def in_progress(port: int) -> float:
    """The node's ``inferq_http_requests_in_progress``, less this scrape itself."""
    text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith("inferq_http_requests_in_progress"):
            return float(line.split()[-1]) - 1
    return 0.0


def upstream_port(record: dict[str, Any]) -> int:
    return int(record["upstream_addr"].rsplit(":", 1)[1])


def test_while_one_node_holds_a_long_poll_short_requests_go_to_the_other(
    two_nodes_behind_nginx: tuple[Nginx, dict[int, ServiceProcess]], keys: Keys
) -> None:
    """Catches: ``least_conn`` dropped from nginx/inferq.conf.template (round-robin sends about
    half of the short requests to the node busy with the long-poll)."""
    proxy, nodes = two_nodes_behind_nginx
    auth = {"Authorization": f"Bearer {keys.alice}"}
    # Given a job that stays queued, and a client long-polling it through nginx
    submitted = requests.post(
        f"{proxy.url}/v1/jobs",
        json={"model": "digits", "input": holdout(1)[0][0]},
        headers=auth,
        timeout=10,
    )
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["id"]
    long_poll: list[requests.Response] = []
    poller = threading.Thread(
        target=lambda: long_poll.append(
            requests.get(f"{proxy.url}/v1/jobs/{job_id}?wait=25", headers=auth, timeout=60)
        )
    )
    poller.start()
    try:
        deadline = time.monotonic() + 20
        busy = [port for port in nodes if in_progress(port) >= 1]
        while not busy and time.monotonic() < deadline:
            time.sleep(0.05)
            busy = [port for port in nodes if in_progress(port) >= 1]
        assert len(busy) == 1, "the long-poll never reached a node"
        (idle,) = set(nodes) - set(busy)

        # When short requests are sent one after another while it waits
        for _ in range(SHORT_REQUESTS):
            assert requests.get(f"{proxy.url}/healthz", timeout=10).status_code == 200
        still_waiting = not long_poll
    finally:
        # (canceling the job ends the long-poll at once)
        requests.post(f"{proxy.url}/v1/jobs/{job_id}/cancel", headers=auth, timeout=10)
        poller.join(timeout=60)
    assert still_waiting, "the long-poll ended before the short requests did"
    assert long_poll and long_poll[0].json()["status"] == "canceled"

    # Then nginx sent every short request to the node without the long-poll (by its access
    # log, which has a line once a request is answered)
    def logged() -> tuple[list[int], list[dict[str, Any]]]:
        records = proxy.access_log()
        polls = [r for r in records if r["uri"].startswith(f"/v1/jobs/{job_id}?wait=")]
        return [upstream_port(r) for r in records if r["uri"] == "/healthz"], polls

    deadline = time.monotonic() + 10
    shorts, polls = logged()
    while (len(shorts) < SHORT_REQUESTS or not polls) and time.monotonic() < deadline:
        time.sleep(0.1)
        shorts, polls = logged()
    (polled,) = polls
    assert upstream_port(polled) == busy[0]
    assert shorts == [idle] * SHORT_REQUESTS, {
        "long-poll on": busy[0],
        "short requests by node": {p: shorts.count(p) for p in nodes},
    }
