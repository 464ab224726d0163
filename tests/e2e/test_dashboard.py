"""The operator's page in headless Chromium against a running system: it loads without a
console error, and every number it shows is the API's (``GET /v1/stats``). A screenshot is
saved as test-artifacts/dashboard.png."""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import pytest

from inferq.core.settings import Settings
from tests.conftest import Keys
from tests.e2e.conftest import Stack, start_stack
from tests.factories import Artifact, experiment_model, holdout, stored_bytes
from tests.services import CI

pytestmark = pytest.mark.e2e

CHROMIUM = os.environ.get("INFERQ_TEST_CHROMIUM", "/usr/bin/chromium")
# Debian's chromium, never a browser Playwright would download; nothing outside this host.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACT = Path(__file__).resolve().parents[2] / "test-artifacts" / "dashboard.png"


def playwright() -> Any:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if CI:
            pytest.fail("CI: playwright is not installed (pip install -e .[dev])")
        pytest.skip("playwright is not installed (pip install -e .[dev])")
    if shutil.which(CHROMIUM) is None:
        if CI:
            pytest.fail(f"CI: {CHROMIUM} is missing (.ci/run installs chromium)")
        pytest.skip(f"{CHROMIUM} is missing (apt-get install chromium)")
    return sync_playwright


@pytest.fixture
def stack(settings: Settings, digits_version: int, keys: Keys, tmp_path: Path) -> Iterator[Stack]:
    running = start_stack(settings.replace(cache_ttl_s=60), tmp_path, workers=1)
    yield running
    running.stop()


def same_weights_model(settings: Settings) -> str:
    """A model with two versions of digits' weights, the first active."""
    from db.registry import get_model, loadable_version
    from inferq.cli.common import db_session

    with db_session(settings) as session:
        digits = get_model(session, "digits")
        assert digits is not None and digits.active_version_id is not None
        weights = loadable_version(session, digits.active_version_id)
        assert weights is not None
        data = stored_bytes(settings, weights.artifact_uri)
        artifact = Artifact(data, weights.sha256, {"holdout_accuracy": 0.99})
    return experiment_model(settings, [artifact, artifact], active=1)


def load(stack: Stack, keys: Keys, operator_key: str) -> None:
    """Jobs that succeed, come from the cache, fail; feedback; an A/B experiment's traffic."""
    alice, operator = stack.client(keys.alice), stack.client(operator_key)
    pairs = holdout(10)
    with ThreadPoolExecutor(max_workers=5) as pool:
        done = list(pool.map(lambda pair: alice.submit("digits", pair[0], wait=20), pairs))
    assert {job["status"] for job in done} == {"succeeded"}
    for pixels, _ in pairs[:3]:
        assert alice.submit("digits", pixels)["cached"] is True
    # passes the API's PNG signature check, fails in the worker
    failed = alice.submit("digits", {"image": "iVBORw0KGgoAAAANSUhEUgAAAAEAAAAB"}, wait=20)
    assert failed["status"] == "failed"
    for job, (_, label) in zip(done[:5], pairs, strict=False):
        alice.feedback(job["id"], label=label)
    model = same_weights_model(stack.settings)
    operator.start_experiment(
        {"model": model, "name": "dashboard A/B", "arms": [{"version": 1}, {"version": 2}]}
    )
    for i, (pixels, _) in enumerate(holdout(6)):
        assert alice.submit(model, pixels, user=f"u{i}", wait=20)["status"] == "succeeded"


def to_fixed(value: float, digits: int) -> str:
    """JavaScript's ``Number.prototype.toFixed``: a tie of the exact binary value rounds away
    from zero (Python's formatting rounds it to even: 4606.25 is "4606.2" there, "4606.3" here)."""
    exact = Decimal(value).quantize(Decimal(1).scaleb(-digits), rounding=ROUND_HALF_UP)
    return f"{exact:.{digits}f}"


def shown(value: Any, kind: str) -> str:
    """What the page prints for ``value`` (dashboard.js FORMATS)."""
    if value is None:
        return "—"
    return {
        "int": lambda v: str(math.floor(v + 0.5)),  # Math.round: ties toward +infinity
        "rate": lambda v: to_fixed(v, 2),
        "ms": lambda v: to_fixed(v, 1) + " ms",
        "pct": lambda v: to_fixed(v * 100, 2) + " %",
    }[kind](value)


def test_numbers_are_formatted_as_the_page_formats_them() -> None:
    assert shown(4606.25, "ms") == "4606.3 ms"  # the tie a full run met
    assert shown(0.125, "rate") == "0.13" and shown(-0.125, "rate") == "-0.13"
    assert shown(2.5, "int") == "3" and shown(-2.5, "int") == "-2"
    assert shown(0.1, "ms") == "0.1 ms" and shown(None, "ms") == "—"


def at(document: dict[str, Any], path: str) -> Any:
    node: Any = document
    for part in path.split("."):
        node = node.get(part) if isinstance(node, dict) else None
    return node


def test_the_dashboard_shows_the_apis_numbers_without_errors(
    stack: Stack, keys: Keys, operator_key: str
) -> None:
    sync_playwright = playwright()
    # Given a system that served, cached and failed jobs, with feedback and an experiment
    load(stack, keys, operator_key)

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda error: problems.append(str(error)))

            # When an operator opens the page with an operator key
            with page.expect_response(lambda r: "/v1/stats" in r.url) as fetched:
                page.goto(f"{stack.url}/dashboard#key={operator_key}")
            page.wait_for_selector("body[data-state=ready]", timeout=15_000)
            seen = fetched.value.json()
            texts = page.eval_on_selector_all(
                "[data-stat]",
                "els => els.map(e => [e.dataset.stat, e.dataset.format, e.textContent])",
            )
            tables = {
                name: page.locator(f"#{name} tbody tr").count()
                for name in ("lanes", "workers", "quality", "training", "versions")
            }
            arms = page.locator("#experiments .experiment tbody tr").count()
            series = page.locator("#chart-latency path.series").count()
            ARTIFACT.parent.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACT), full_page=True)
            address = page.url
        finally:
            browser.close()

    # Then nothing went wrong in the page, and the key left the address bar
    assert problems == []
    assert "key=" not in address
    # and every number is the API's: the document the page fetched from it, taken after
    # the load above (its jobs are counted). Not a second document fetched afterwards: its
    # 10-minute window has moved on by then, and the jobs of the run's first minutes that
    # left it change the counts (a loaded run: 26215 finished shown, 26211 a moment later).
    assert len(texts) >= 15
    for path, kind, text in texts:
        assert text == shown(at(seen, path), kind), path
    assert at(seen, "jobs.finished") >= 20 and at(seen, "jobs.failed") >= 1
    assert at(seen, "jobs.cached") >= 3 and at(seen, "workers.consuming") == 1
    # and the tables and charts hold what the document holds
    assert tables["lanes"] == len(seen["lanes"]) == 5
    assert tables["workers"] == len(seen["workers"]["list"]) == 1
    assert tables["quality"] == len(seen["quality"])
    assert tables["versions"] == len(seen["recent_versions"])
    assert tables["training"] == len(seen["training_runs"])
    assert arms == sum(len(e["arms"]) for e in seen["experiments"]) >= 2
    assert series >= 1
    assert ARTIFACT.stat().st_size > 10_000
