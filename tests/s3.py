"""A real S3-compatible server for the tests: moto's server mode on a loopback port.

Not a mock of the client: boto3 speaks HTTP to it as it would to S3 or MinIO.
"""

from __future__ import annotations

import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import requests

from tests.processes import free_port

CREDENTIALS = {"AWS_ACCESS_KEY_ID": "inferq-test", "AWS_SECRET_ACCESS_KEY": "inferq-test"}


@contextmanager
def s3_server(logs: Path) -> Iterator[str]:
    """An S3 endpoint URL, served until the block ends."""
    port = free_port()
    log = (logs / f"moto-{port}.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                requests.get(url, timeout=1)
                break
            except requests.RequestException:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(
                        f"moto did not start: {(logs / log.name).read_text()}"
                    ) from None
                time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def new_bucket(endpoint: str) -> str:
    """A bucket of its own on ``endpoint``."""
    import boto3

    name = f"inferq-{uuid.uuid4().hex[:10]}"
    client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_keys())
    client.create_bucket(Bucket=name)
    return name


def _keys() -> dict[str, str]:
    return {
        "aws_access_key_id": CREDENTIALS["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": CREDENTIALS["AWS_SECRET_ACCESS_KEY"],
    }


@pytest.fixture(scope="module")
def s3_endpoint(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A moto S3 server for the module's tests, with the test credentials in the environment."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        with s3_server(tmp_path_factory.mktemp("moto")) as url:
            yield url
