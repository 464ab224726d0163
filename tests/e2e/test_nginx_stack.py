"""``inferq up --api-nodes 2 --workers 2``: real nginx in front of two API nodes, real workers.

Runs on the session's Postgres, Redis and namespace; the stack's own state is in a temporary
INFERQ_HOME. Figures are printed (run with -s to see them).
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from inferq.client import TERMINAL, Client
from inferq.core.errors import Problem
from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.e2e.nginx_stack import ROOT, UpStack, api_access_lines, at_once, nginx_binary
from tests.factories import holdout

pytestmark = pytest.mark.e2e

JOBS = 500
CLIENTS = 16


@pytest.fixture(scope="module")
def up(
    settings: Settings, digits_version: int, keys: Keys, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[UpStack]:
    nginx_binary()  # skip locally (fail in CI) without nginx
    # Every client of these tests is 127.0.0.1: a rate nginx will not reach here.
    stack = UpStack(
        settings,
        tmp_path_factory.mktemp("up") / "home",
        ["--api-nodes", "2", "--workers", "2"],
        INFERQ_RATE_LIMIT_RPS="100000",
        INFERQ_RATE_LIMIT_BURST="100000",
    )
    try:
        stack.wait_up()
        yield stack
    finally:
        stack.stop()


def client(stack: UpStack, key: str) -> Client:
    return Client(stack.url, key, timeout_s=30)


def test_500_jobs_through_nginx_all_succeed_and_both_nodes_serve(up: UpStack, keys: Keys) -> None:
    # Given inferq up with nginx on the public port in front of two API nodes
    ports = {up.node_port("api:api-1"): "api-1", up.node_port("api:api-2"): "api-2"}
    assert "nginx on port" in up.output()
    inputs = [pair[0] for pair in holdout()]
    local = threading.local()

    def run(i: int) -> dict[str, Any]:
        if not hasattr(local, "client"):
            local.client = client(up, keys.alice)
        job = local.client.submit("digits", inputs[i % len(inputs)], wait=5)
        return job if job["status"] in TERMINAL else local.client.wait(job["id"], timeout_s=120)

    # When 16 clients submit 500 jobs through nginx and wait for them
    started = time.monotonic()
    with ThreadPoolExecutor(max_workers=CLIENTS) as pool:
        finished = list(pool.map(run, range(JOBS)))
    elapsed = time.monotonic() - started

    # Then every job succeeded
    assert Counter(job["status"] for job in finished) == {"succeeded": JOBS}
    assert len({job["id"] for job in finished}) == JOBS

    # and both nodes served submissions, by their own access logs and by nginx's
    def logged_submissions() -> dict[str, int]:
        return {
            name: sum(
                1
                for line in api_access_lines(up.log(name))
                if line["method"] == "POST" and line["path"] == "/v1/jobs"
            )
            for name in ("api-1", "api-2")
        }

    def proxied_submissions() -> Counter[str]:
        return Counter(
            ports.get(_port(r), r["upstream_addr"])
            for r in up.nginx_log()
            if r["method"] == "POST" and r["uri"] == "/v1/jobs"
        )

    # Both logs trail the answers a little: supervisord copies a node's output to its file a
    # moment later, and nginx logs a request once its last byte is sent.
    deadline = time.monotonic() + 10
    while True:
        submissions, upstreams = logged_submissions(), proxied_submissions()
        complete = min(sum(submissions.values()), sum(upstreams.values())) >= JOBS
        if complete or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    print(
        f"\n{JOBS} jobs from {CLIENTS} clients in {elapsed:.1f} s; submissions per node "
        f"(node logs) {submissions}, (nginx log) {dict(upstreams)}"
    )
    assert sum(submissions.values()) >= JOBS
    assert min(submissions.values()) >= JOBS // 10, submissions
    assert dict(upstreams) == submissions
    # and the request id nginx made for a request is the one the node logged
    node_ids = {line["request_id"] for line in api_access_lines(up.log("api-1"))}
    nginx_ids = {r["request_id"] for r in up.nginx_log() if ports.get(_port(r)) == "api-1"}
    assert node_ids & nginx_ids and len(next(iter(node_ids & nginx_ids))) == 32


def _port(record: dict[str, Any]) -> int:
    """The port of the node that answered: "127.0.0.1:123", after a retry on the next node
    "127.0.0.1:123, 127.0.0.1:456", when nginx never got to a node "" or the upstream's name."""
    last = record["upstream_addr"].split(",")[-1]
    return int(last.rsplit(":", 1)[1]) if ":" in last else 0


class Outcomes:
    """What the clients saw: requests by id, failures, and the jobs that were accepted."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.requests = 0
        self.failures: list[tuple[str, str, str]] = []  # (method, request id, what)
        self.accepted: list[str] = []

    def call(self, method: str, c: Client, func: Any, *args: Any, **kw: Any) -> Any:
        request_id = uuid.uuid4().hex
        c.session.headers["X-Request-ID"] = request_id
        with self.lock:
            self.requests += 1
        try:
            return func(*args, **kw)
        except (Problem, requests.RequestException) as exc:
            with self.lock:
                self.failures.append((method, request_id, repr(exc)[:200]))
            return None


def submit_and_poll(stack: UpStack, key: str, out: Outcomes, stop: threading.Event) -> None:
    """One client: submit a job, poll it to the end, again, until told to stop."""
    c = client(stack, key)
    inputs = [pair[0] for pair in holdout(50)]
    i = 0
    while not stop.is_set():
        job = out.call("POST", c, c.submit, "digits", inputs[i % len(inputs)])
        i += 1
        if job is None:
            continue
        with out.lock:
            out.accepted.append(job["id"])
        while job is not None and job["status"] not in TERMINAL and not stop.is_set():
            job = out.call("GET", c, c.get, job["id"], wait=2)


def kill_tree(pid: int) -> list[int]:
    """SIGKILL a process and its children, as a crash or the OOM killer would, and return
    once they are gone (a killed process still holds its sockets until then)."""
    root = psutil.Process(pid)
    victims = [root, *root.children(recursive=True)]
    for process in victims:
        process.kill()
    psutil.wait_procs(victims, timeout=10)
    return [p.pid for p in victims]


def test_killing_an_api_node_fails_only_what_it_was_serving(up: UpStack, keys: Keys) -> None:
    # Given clients that submit and poll through nginx, in front of two API nodes
    killed_port = up.node_port("api:api-1")
    survivor_port = up.node_port("api:api-2")
    out, stop = Outcomes(), threading.Event()
    clients = [
        threading.Thread(target=submit_and_poll, args=(up, keys.alice, out, stop))
        for _ in range(CLIENTS)
    ]
    for thread in clients:
        thread.start()
    time.sleep(3)
    before = out.requests

    # When one API node is killed (its gunicorn master and workers) while they run
    killed_pids = kill_tree(up.program_pid("api:api-1"))
    killed_at = time.time()  # every process of the node is gone by now
    time.sleep(5)
    stop.set()
    for thread in clients:
        thread.join(60)
    after = out.requests - before

    # Then the only requests that failed were in flight on that node when it died
    log = {r["request_id"]: r for r in up.nginx_log()}
    failed = [log[request_id] for _, request_id, _ in out.failures]
    print(
        f"\nkilled api-1 (pids {killed_pids}); {out.requests} requests, {after} after the kill "
        f"began; failures: {len(out.failures)} {[(m, f['status']) for (m, _, _), f in zip(out.failures, failed, strict=True)]}"
    )
    assert len(out.failures) <= CLIENTS
    for (method, _, what), record in zip(out.failures, failed, strict=True):
        assert _port(record) == killed_port, (what, record)
        if method == "GET":
            # a read the node never answered is retried on the other node by nginx; one
            # fails only when the node died after its headers had already gone to the client
            assert record["status"] == 200, (what, record)
        else:
            # a submission is never retried (it may have been stored): 502, or a cut 202
            assert method == "POST" and record["status"] in (502, 202), (what, record)
        began = record["msec"] - record["request_time"]
        # in flight on that node when it died (nginx's clock has millisecond resolution)
        assert began <= killed_at + 0.01, (record, killed_at)
    # and nginx routed around the dead node: after the kill the survivor kept serving
    served_after = Counter(
        _port(r) for r in up.nginx_log() if r["msec"] - r["request_time"] > killed_at + 0.5
    )
    names = {killed_port: "api-1 (killed, then restarted by supervisord)", survivor_port: "api-2"}
    print(
        f"requests after the kill, by node: { {names.get(p, p): n for p, n in served_after.items()} }"
    )
    assert served_after[survivor_port] > 20
    # and no request begun after the kill failed (nginx may log one cut at the kill late)
    assert all(
        r["status"] < 500 for r in up.nginx_log() if r["msec"] - r["request_time"] > killed_at + 0.5
    )

    # and every job the service accepted completes
    c = client(up, keys.alice)
    statuses = Counter(c.wait(job_id, timeout_s=120)["status"] for job_id in out.accepted)
    print(f"{len(out.accepted)} jobs accepted: {dict(statuses)}")
    assert statuses == {"succeeded": len(out.accepted)}


def test_an_oversized_body_is_a_413_problem_from_nginx(up: UpStack, keys: Keys) -> None:
    headers = {"Authorization": f"Bearer {keys.alice}", "Content-Type": "application/json"}
    big = b'{"model": "digits", "input": {"pixels": [' + b"0," * 600_000 + b"0]}}"

    answer = requests.post(up.url + "/v1/jobs", data=big, headers=headers, timeout=30)

    assert answer.status_code == 413
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert answer.json()["type"].endswith("/payload-too-large")
    assert not any(line["status"] == 413 for line in api_access_lines(up.log("api-2")))


def test_the_container_healthchecks_pass_on_the_running_stack(up: UpStack) -> None:
    script = [sys.executable, str(ROOT / "deploy" / "healthcheck.py")]

    def check(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*script, *args], env={**up.env, **env}, capture_output=True, text=True, timeout=60
        )

    for args in (["http", up.url + "/readyz"], ["worker"], ["deps"]):
        result = check(*args)
        # like Docker's healthcheck retries: a worker may still be loading torch at first
        deadline = time.monotonic() + 60
        while result.returncode != 0 and time.monotonic() < deadline:
            time.sleep(1)
            result = check(*args)
        assert result.returncode == 0, (args, result.stderr)
    # and each says "unhealthy" when what it checks is not there
    assert check("http", up.url + "/no-such-page").returncode == 1
    assert check("worker", INFERQ_NAMESPACE="nobody-here").returncode == 1
    unreachable = "postgresql+psycopg2://x@127.0.0.1:1/x"
    assert check("deps", INFERQ_DATABASE_URL=unreachable).returncode == 1


def test_over_the_rate_limit_inferq_up_answers_429_with_retry_after(
    settings: Settings, keys: Keys, tmp_path: Path
) -> None:
    # Given inferq up whose nginx allows 2 requests per second and a burst of 3 per address
    nginx_binary()
    stack = UpStack(
        settings,
        tmp_path / "home",
        ["--api-nodes", "1", "--workers", "0"],
        INFERQ_RATE_LIMIT_RPS="2",
        INFERQ_RATE_LIMIT_BURST="3",
    )
    try:
        stack.wait_up()
        time.sleep(2)  # the readiness probe of `up` spent some of the allowance

        # When a client sends 10 requests at once (all in flight together, so how fast the
        # API answers the ones let through does not matter)
        answers = at_once(stack.url + "/v1/models", {"Authorization": f"Bearer {keys.alice}"}, 10)
    finally:
        stack.stop()

    # Then the allowance passes, and the rest are 429 problems with Retry-After
    # (the allowance refills at 2/s, so requests spread over a slow start may get one more)
    codes = sorted(a.status_code for a in answers)
    assert codes.count(200) in (4, 5) and codes.count(429) == 10 - codes.count(200), codes
    limited = next(a for a in answers if a.status_code == 429)
    assert limited.headers["Retry-After"] == "1"
    assert limited.json()["status"] == 429
    assert limited.headers["X-Request-ID"]


def _slow_upload(up: UpStack, key: str, source: str) -> socket.socket:
    """A batch upload from loopback address ``source`` that announces 100 kB, sends two
    bytes and stalls (an attacker's slow client: it would go on sending 2 bytes every 5 s)."""
    port = int(up.url.rsplit(":", 1)[1])
    conn = socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(source, 0))
    conn.sendall(
        f"POST /v1/batches?model=digits HTTP/1.1\r\nHost: inferq\r\n"
        f"Authorization: Bearer {key}\r\nContent-Type: application/x-ndjson\r\n"
        f'Content-Length: 100000\r\n\r\n{{"'.encode()
    )
    return conn


def _batch_posts(up: UpStack) -> int:
    return sum(
        1
        for node in ("api-1", "api-2")
        for line in api_access_lines(up.log(node))
        if line.get("path") == "/v1/batches" and line.get("method") == "POST"
    )


def test_slow_batch_uploads_never_hold_an_api_node(up: UpStack, keys: Keys) -> None:
    """150 clients trickle batch uploads, each from its own loopback address (so the limit per
    address does not stop them: the attack from many hosts). nginx takes an upload whole
    before a node sees it, so none of them reaches a node: other requests are answered as
    usual, and the nodes log none of the uploads, even after the clients give up.

    Mutation caught: ``proxy_request_buffering off;`` back in the /v1/batches location: the
    nodes receive the 150 uploads as they trickle (their threads, 128 in all by default, are
    held: GET /v1/models waits past its 10 s timeout) and log them when they are cut off."""
    headers = {"Authorization": f"Bearer {keys.alice}"}
    before = _batch_posts(up)
    slow = [_slow_upload(up, keys.alice, f"127.0.1.{i + 1}") for i in range(150)]
    try:
        time.sleep(2)  # what nginx would hand on has reached the nodes by now

        # When other clients read and submit while the uploads trickle
        def read(_: int) -> tuple[int, float]:
            began = time.monotonic()
            answer = requests.get(up.url + "/v1/models", headers=headers, timeout=10)
            return answer.status_code, time.monotonic() - began

        with ThreadPoolExecutor(8) as pool:
            timed = list(pool.map(read, range(40)))
        job = client(up, keys.alice).submit("digits", holdout()[0][0], wait=10)
        reads = [status for status, _ in timed]
        took = sorted(seconds for _, seconds in timed)
        print(
            f"\nGET /v1/models beside 150 slow uploads: p50 {took[19]:.3f} s, max {took[-1]:.3f} s"
        )

        # Then they are answered, and no node has seen an upload yet
        assert reads == [200] * 40
        assert job["status"] == "succeeded"
        assert _batch_posts(up) == before
    finally:
        for conn in slow:
            conn.close()
    # and uploads cut off at nginx never reach a node at all
    time.sleep(2)
    assert _batch_posts(up) == before
    cut = [r for r in up.nginx_log() if r["uri"].startswith("/v1/batches")][-150:]
    assert len(cut) == 150 and {r["upstream_addr"] for r in cut} == {""}, cut[:3]


def test_one_address_may_hold_only_a_few_uploads_at_once(up: UpStack, keys: Keys) -> None:
    """Mutation caught: the ``limit_conn`` line of the /v1/batches location removed (the ninth
    slow upload from one address is accepted, and holds nginx like the others)."""
    # Given one address with as many uploads open as it may have (8 by default)
    source = "127.0.2.1"
    held = [_slow_upload(up, keys.alice, source) for _ in range(8)]
    try:
        time.sleep(0.5)
        # When it opens one more
        extra = _slow_upload(up, keys.alice, source)
        with extra:
            answer = extra.recv(65536).decode("latin-1")
    finally:
        for conn in held:
            conn.close()

    # Then that one is refused at once with a 429 problem that says why
    head, _, body = answer.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 429"), head
    assert "Content-Type: application/problem+json" in head and "Retry-After: 1" in head
    assert "uploads at once" in json.loads(body)["detail"]

    # and once its uploads are done, the same address uploads a batch again
    time.sleep(0.5)
    port = int(up.url.rsplit(":", 1)[1])
    line = json.dumps(holdout()[0][0]).encode() + b"\n"
    with socket.create_connection(("127.0.0.1", port), 10, source_address=(source, 0)) as conn:
        conn.sendall(
            b"POST /v1/batches?model=digits HTTP/1.1\r\nHost: inferq\r\nConnection: close\r\n"
            + f"Authorization: Bearer {keys.alice}\r\n".encode()
            + f"Content-Type: application/x-ndjson\r\nContent-Length: {len(line)}\r\n\r\n".encode()
            + line
        )
        assert conn.recv(65536).startswith(b"HTTP/1.1 202"), "the limit was not released"
