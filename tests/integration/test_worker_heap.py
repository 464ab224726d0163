"""A worker freezes what it made while starting out of the cycle collector's reach, before
it consumes: a full collection walked about 250,000 such objects (140 ms, the batch in hand
stalled) and walks about 20,000 since."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from typing import Any

import pytest
from celery import Celery

from inferq.core.settings import Settings
from workers import service


class Idle:
    """A heartbeat that does not beat (the worker under test never consumes)."""

    def __init__(self, *args: Any) -> None:
        pass

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


@pytest.fixture
def unfrozen() -> Iterator[None]:
    gc.unfreeze()
    yield
    gc.unfreeze()


def test_a_worker_freezes_its_startup_heap_before_it_consumes(
    settings: Settings, digits_version: int, monkeypatch: pytest.MonkeyPatch, unfrozen: None
) -> None:
    """Catches: a worker whose every full collection walks Celery's, kombu's, SQLAlchemy's
    and torch's objects again."""
    frozen_when_consuming: list[int] = []
    monkeypatch.setattr(service, "Heartbeat", Idle)
    monkeypatch.setattr(service, "start_metrics", lambda *args: None)
    monkeypatch.setattr(
        Celery, "worker_main", lambda app, argv: frozen_when_consuming.append(gc.get_freeze_count())
    )

    service.run_worker(settings, "heap-test")

    assert len(frozen_when_consuming) == 1
    assert frozen_when_consuming[0] > 10_000
