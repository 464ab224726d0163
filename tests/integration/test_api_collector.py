"""An API process keeps Python's cycle collector from pausing it (api.server.tune_collector).

Held long-polls keep their requests' objects alive; a full collection walks every live
object, and with 5,000 long-polls it stopped a process for about 0.2 s at a time."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from api.server import API_GC_THRESHOLDS, ApiServer
from inferq.core.settings import Settings


@pytest.fixture
def collector() -> Iterator[None]:
    """This test process's collector, as it was, afterwards."""
    thresholds = gc.get_threshold()
    gc.unfreeze()
    yield
    gc.unfreeze()
    gc.set_threshold(*thresholds)


def test_a_loaded_api_process_freezes_its_app_and_collects_young_objects_less_often(
    settings: Settings, collector: None
) -> None:
    """Catches: an API process whose every full collection walks the loaded app's objects
    again, and whose young generation is collected every 700 allocations."""
    # Given nothing frozen, and Python's default thresholds
    gc.set_threshold(700, 10, 10)
    assert gc.get_freeze_count() == 0

    # When gunicorn's worker loads the app
    app = ApiServer(settings, "127.0.0.1:0").load()

    # Then every object alive at that point (the app's included) is out of the collector's
    # reach, and young objects are collected after 10,000 allocations
    assert "inferq" in app.extensions  # the app, ready to serve
    assert gc.get_freeze_count() > 10_000
    assert gc.get_threshold() == API_GC_THRESHOLDS == (10_000, 50, 100)
