"""A large artifact through a real API node: streamed to the store, never held in memory.

The issue's bound, on a 300 MB artifact: the API's resident memory grows by less than 100 MB
while the upload streams through it. (The 2 GB figures are a benchmark: BENCHMARKS.md.)
"""

from __future__ import annotations

import contextlib
import threading
import time
import uuid
from pathlib import Path

import psutil
import requests

from inferq.core.settings import Settings
from tests.fixture_models.opaque import write_weights
from tests.processes import ServiceProcess, free_port, wait_for_http

SIZE = 300 * 2**20
BOUND = 100 * 2**20


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
