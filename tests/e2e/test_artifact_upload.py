"""A large artifact through a real API node: streamed to the store, never held in memory.

The issue's bound, on a 300 MB artifact: the API's resident memory grows by less than 100 MB
while the upload streams through it. (The 2 GB figures are a benchmark: BENCHMARKS.md.)
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import requests

from inferq.core.settings import Settings
from tests.e2e.nginx_stack import Nginx
from tests.fixture_models.opaque import write_weights
from tests.processes import ServiceProcess, free_port, wait_for_http

SIZE = 300 * 2**20
BOUND = 100 * 2**20
OPAQUE = "tests.fixture_models.opaque:OpaqueHandler"
#: nginx's limits in the tests through it: an artifact may be far larger than other bodies.
NGINX_ARTIFACT_LIMIT = 64 * 1024
NGINX_BODY_LIMIT = 1024


def rss_of_tree(pid: int) -> int:
    """The largest resident set among a gunicorn master and its workers."""
    root = psutil.Process(pid)
    sizes = []
    for proc in [root, *root.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):
            sizes.append(proc.memory_info().rss)
    return max(sizes)


def test_a_300_mb_upload_grows_the_api_by_less_than_100_mb(
    settings: Settings, digits_version: int, operator_key: str, tmp_path: Path
) -> None:
    """Catches: reading the upload whole (request.data, a bytes body), or buffering it in a
    list or BytesIO before storing."""
    weights = tmp_path / "big.safetensors"
    write_weights(weights, SIZE)
    port = free_port()
    api = ServiceProcess("api-upload", ["api", "--port", str(port)], settings, tmp_path)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_for_http(f"{url}/healthz", api)
        auth = {"Authorization": f"Bearer {operator_key}"}
        name = f"big-{uuid.uuid4().hex[:6]}"
        created = requests.post(
            f"{url}/v1/models",
            json={"name": name, "handler": "tests.fixture_models.opaque:OpaqueHandler"},
            headers=auth,
            timeout=120,
        )
        assert created.status_code == 201, created.text
        baseline = rss_of_tree(api.pid)
        peak = [baseline]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_of_tree(api.pid))
                time.sleep(0.02)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        with weights.open("rb") as body:
            answer = requests.post(
                f"{url}/v1/models/{name}/versions?activate=true",
                data=body,
                headers={**auth, "Content-Type": "application/octet-stream"},
                timeout=600,
            )
        done.set()
        sampler.join()
        assert answer.status_code == 201, answer.text
        assert answer.json()["size_bytes"] == weights.stat().st_size
        growth = peak[0] - baseline
        print(f"API RSS: baseline {baseline / 2**20:.0f} MB, peak growth {growth / 2**20:.1f} MB")
        assert growth < BOUND, f"the API grew by {growth / 2**20:.0f} MB for a 300 MB upload"
    finally:
        api.stop()


@dataclasses.dataclass
class Proxied:
    """nginx (with small limits) in front of one API node (with the default limits)."""

    url: str
    auth: dict[str, str]
    nginx: Nginx

    def new_model(self) -> str:
        name = f"up-{uuid.uuid4().hex[:6]}"
        created = requests.post(
            f"{self.url}/v1/models", json={"name": name, "handler": OPAQUE}, headers=self.auth,
            timeout=120,
        )  # fmt: skip
        assert created.status_code == 201, created.text
        return name

    def model(self, name: str) -> dict[str, Any]:
        shown = requests.get(f"{self.url}/v1/models/{name}", headers=self.auth, timeout=30)
        assert shown.status_code == 200, shown.text
        return dict(shown.json())

    def versions(self, name: str) -> list[int]:
        return [v["version"] for v in self.model(name)["versions"]]


@pytest.fixture
def proxied(
    settings: Settings, digits_version: int, operator_key: str, tmp_path: Path
) -> Iterator[Proxied]:
    port = free_port()
    api = ServiceProcess("api-behind-nginx", ["api", "--port", str(port)], settings, tmp_path)
    running = None
    try:
        wait_for_http(f"http://127.0.0.1:{port}/healthz", api)
        limits = Settings.of(
            port=free_port(),
            max_artifact_bytes=NGINX_ARTIFACT_LIMIT,
            max_body_bytes=NGINX_BODY_LIMIT,
        )
        running = Nginx(limits, tmp_path / "nginx", [port])
        yield Proxied(running.url, {"Authorization": f"Bearer {operator_key}"}, running)
    finally:
        if running is not None:
            running.stop()
        api.stop()


def test_nginx_refuses_an_artifact_over_its_limit_with_a_413_problem(
    proxied: Proxied, tmp_path: Path
) -> None:
    """Given nginx whose artifact limit (64 KiB) is below the API node's (16 GiB), when an
    operator uploads 256 KiB through it (with a length, and streamed in chunks without one),
    then nginx answers 413 application/problem+json naming its limit, and the model has no
    version.

    Catches: the upload location's limit lifted (client_max_body_size 0: nginx passes the
    upload on to the node, which takes it: 201), or the location without its error_page to
    the problem (nginx's HTML 413 page)."""
    name = proxied.new_model()
    weights = tmp_path / "big.safetensors"
    write_weights(weights, 4 * NGINX_ARTIFACT_LIMIT)
    url = f"{proxied.url}/v1/models/{name}/versions?activate=true"
    headers = {**proxied.auth, "Content-Type": "application/octet-stream"}

    def chunks() -> Iterator[bytes]:
        with weights.open("rb") as stream:
            while chunk := stream.read(16 * 1024):
                yield chunk

    for body in (weights.read_bytes(), chunks()):
        answer = requests.post(url, data=body, headers=headers, timeout=60)

        assert answer.status_code == 413, answer.text
        assert answer.headers["Content-Type"] == "application/problem+json"
        assert (
            answer.json()["detail"] == f"The artifact is larger than {NGINX_ARTIFACT_LIMIT} bytes."
        )
    assert proxied.versions(name) == []


def test_an_artifact_over_the_body_limit_and_under_the_artifact_limit_registers_through_nginx(
    proxied: Proxied, tmp_path: Path
) -> None:
    """Given nginx whose body limit is 1 KiB and artifact limit 64 KiB, when an operator
    uploads a 16 KiB artifact through it, then the version registers and is active.

    Catches: the upload location's regex not matching /v1/models/NAME/versions (the general
    1 KiB limit would refuse it with 413)."""
    name = proxied.new_model()
    weights = tmp_path / "small.safetensors"
    write_weights(weights, 16 * 1024)

    answer = requests.post(
        f"{proxied.url}/v1/models/{name}/versions?activate=true",
        data=weights.read_bytes(),
        headers={**proxied.auth, "Content-Type": "application/octet-stream"},
        timeout=60,
    )

    assert answer.status_code == 201, answer.text
    assert answer.json()["size_bytes"] == weights.stat().st_size
    assert proxied.versions(name) == [1] and proxied.model(name)["active_version"] == 1
