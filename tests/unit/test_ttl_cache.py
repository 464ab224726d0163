"""The API's per-process cache loads each key once at a time: thousands of concurrent
requests (gevent) must not all reload an entry that expired under them."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
from flask import Flask

from api.state import TtlCache, app_cache


def slow_loader(calls: list[int], value: int) -> tuple[threading.Event, object]:
    release = threading.Event()

    def load() -> int:
        calls.append(value)
        release.wait(5)
        return value

    return release, load


def test_concurrent_misses_load_once() -> None:
    cache: TtlCache[str, int] = TtlCache(60)
    calls: list[int] = []
    release, load = slow_loader(calls, 7)
    with ThreadPoolExecutor(max_workers=20) as pool:
        # Given 20 requests missing the same key at once
        futures = [pool.submit(cache.get, "lane", load) for _ in range(20)]  # type: ignore[arg-type]
        time.sleep(0.2)
        release.set()
        # Then one loaded it, and every one got its value
        assert [f.result() for f in futures] == [7] * 20
    assert calls == [7]


def test_an_expired_entry_answers_while_one_request_reloads_it() -> None:
    cache: TtlCache[str, int] = TtlCache(0.5)
    assert cache.get("lane", lambda: 1) == 1
    time.sleep(0.6)
    calls: list[int] = []
    release, load = slow_loader(calls, 2)
    reloading = threading.Thread(target=cache.get, args=("lane", load))
    reloading.start()
    time.sleep(0.1)
    # While one request reloads the expired entry, others answer from it at once
    assert cache.get("lane", lambda: 3) == 1
    release.set()
    reloading.join()
    assert cache.get("lane", lambda: 4) == 2
    assert calls == [2]


def test_no_ttl_caches_nothing() -> None:
    cache: TtlCache[str, int] = TtlCache(0)
    assert [cache.get("k", lambda n=n: n) for n in range(3)] == [0, 1, 2]


def test_an_apps_named_cache_is_made_once_and_then_only_looked_up(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given an app, and every TtlCache built counted
    built: list[float] = []
    real_init = TtlCache.__init__

    def counting_init(self: TtlCache[Any, Any], ttl_s: float, **options: Any) -> None:
        built.append(ttl_s)
        real_init(self, ttl_s, **options)

    monkeypatch.setattr(TtlCache, "__init__", counting_init)
    app = Flask(__name__)

    # When requests ask for the same named cache again and again
    with app.app_context():
        first = app_cache("inferq.test", 5.0)
        found = [app_cache("inferq.test", 5.0) for _ in range(100)]

    # Then it was built once, on the first call, and each call since found that one
    assert built == [5.0]
    assert all(cache is first for cache in found)


def test_an_entry_that_took_long_to_load_lives_in_proportion() -> None:
    """Catches: a figure that takes 0.2 s to compute (a count over a deep backlog) reloaded
    every second, a fifth of the process's time; or a cheap one kept past its TTL."""
    cache: TtlCache[str, int] = TtlCache(0.05, busy_share=0.1)
    loads: list[float] = []

    def load(seconds: float) -> Any:
        def run() -> int:
            loads.append(seconds)
            time.sleep(seconds)
            return len(loads)

        return run

    # A cheap load lives its TTL
    assert cache.get("cheap", load(0.0)) == 1
    time.sleep(0.06)
    assert cache.get("cheap", load(0.0)) == 2
    # A load of 0.1 s at a share of a tenth lives at least a second, not 0.05 s
    assert cache.get("dear", load(0.1)) == 3
    time.sleep(0.3)
    assert cache.get("dear", load(0.1)) == 3
    assert len(loads) == 3
