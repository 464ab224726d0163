"""The live API against its own OpenAPI document: schemathesis generates requests from the
spec (valid and invalid) and checks that no answer is a 5xx or breaks the spec."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests

from inferq.core.settings import Settings
from tests.processes import ServiceProcess, free_port, wait_for_http
from tests.security import make_key
from tests.services import unavailable, wipe_redis

pytestmark = pytest.mark.e2e

CHECKS = ",".join(
    [
        "not_a_server_error",
        "status_code_conformance",
        "content_type_conformance",
        "response_headers_conformance",
        "response_schema_conformance",
        "negative_data_rejection",
    ]
)


@pytest.fixture(scope="module")
def api_url(
    settings: Settings, digits_version: int, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    # Its own namespace: nothing it queues reaches another test's workers. Long-polls are
    # capped short: schemathesis reuses the ids of jobs it made, which stay queued here.
    fuzzed = settings.replace(namespace=settings.namespace + "fz", api_processes=1, max_wait_s=2.0)
    port = free_port()
    api = ServiceProcess("api", ["api", "--port", str(port)], fuzzed, tmp_path_factory.mktemp("fz"))
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(url + "/readyz?scope=node", api)
        yield url
    finally:
        api.stop()
        wipe_redis(fuzzed.effective_redis_url, fuzzed.namespace)


def test_the_spec_is_openapi_3_1_and_lists_every_v1_route(api_url: str) -> None:
    spec = requests.get(api_url + "/openapi.json", timeout=10).json()
    assert spec["openapi"].startswith("3.1")
    assert {"/v1/jobs", "/v1/jobs/{job_id}", "/v1/jobs/{job_id}/webhooks"} <= set(spec["paths"])
    submit = spec["paths"]["/v1/jobs"]["post"]
    variant = spec["components"]["schemas"]["SubmitJob_digits"]
    assert variant["properties"]["input"]["properties"]["pixels"]["maxItems"] == 64
    assert {"$ref": "#/components/schemas/SubmitJob_digits"} in (
        submit["requestBody"]["content"]["application/json"]["schema"]["oneOf"]
    )
    assert "Idempotency-Key" in [p["name"] for p in submit["parameters"]]
    docs = requests.get(api_url + "/docs/", timeout=10)
    assert docs.status_code == 200 and "swagger-ui-bundle.js" in docs.text
    assert "http" not in docs.text.split("<body>")[1].split("swagger-ui-bundle.js")[0]
    bundle = requests.get(api_url + "/docs/swagger-ui-bundle.js", timeout=10)
    assert bundle.status_code == 200 and len(bundle.content) > 100_000


def schemathesis(api_url: str, key: str, report: Path, *narrowing: str) -> str:
    """Run the schemathesis CLI against the live spec; returns its output, asserting success."""
    # The CLI of the interpreter running the tests: a venv's scripts are not on PATH unless
    # the venv is activated, and a `schemathesis` found on PATH may belong to another Python.
    if importlib.util.find_spec("schemathesis") is None:
        unavailable("schemathesis is not installed (pip install -e '.[dev]')")
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{api_url}/openapi.json",
        f"--checks={CHECKS}",
        f"--header=Authorization: Bearer {key}",
        "--max-examples=15",
        "--phases=examples,coverage,fuzzing",
        "--workers=1",
        "--seed=10",
        "--request-timeout=20",
        "--no-shrink",
        "--report=json",
        f"--report-json-path={report}",
        *narrowing,
    ]
    # cwd: schemathesis keeps its example database in ./.schemathesis
    result = subprocess.run(command, capture_output=True, text=True, timeout=240, cwd=report.parent)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output[-8000:]
    assert re.search(r"\d+ generated, \d+ passed", output), output[-3000:]
    return output


def test_schemathesis_finds_no_server_error_and_no_spec_violation(
    api_url: str, settings: Settings, tmp_path: Path
) -> None:
    key = make_key(settings, "fuzz", ["submit", "read"])
    # /readyz answers 503 here by design (no worker consumes this namespace's online lane);
    # its answers have tests of their own (test_service_endpoints.py).
    schemathesis(api_url, key, tmp_path / "report.json", "--exclude-path=/readyz")


def test_schemathesis_on_the_admin_and_operator_reads(
    api_url: str, settings: Settings, tmp_path: Path
) -> None:
    # Reads only: promoting or rolling back digits would change what the other tests run on.
    key = make_key(settings, "fuzz-admin", ["read", "admin", "operator"])
    schemathesis(
        api_url,
        key,
        tmp_path / "report.json",
        "--include-path-regex=^/v1/(webhooks|experiments)",
        "--exclude-method=POST",
    )
