"""In-process baselines: the same model version predicting without any queue in between."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from inferq.settings import Settings

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


def in_process_throughput(
    settings: Settings,
    model: str,
    make_input: Callable[[int], dict[str, Any]],
    sizes: Sequence[int] = BATCH_SIZES,
    seconds_each: float = 1.0,
) -> dict[str, float]:
    """Inputs/s of the model's active version at each batch size (prepare + predict)."""
    # The bench is a CLI tool: it reaches into the worker runtime lazily, here only.
    from db.engine import make_engine, make_session_factory
    from db.registry import serving_info
    from workers.device import choose_device, configure_threads
    from workers.runtime import ModelRuntime

    configure_threads(settings.torch_threads)  # as a worker process runs it

    engine = make_engine(
        settings.require_database_url(), pool_size=1, application_name="inferq-bench"
    )
    sessions = make_session_factory(engine)
    with sessions() as session:
        info = serving_info(session, model)
    if info is None or info.active_version_id is None:
        raise SystemExit(f"model {model!r} has no active version")
    handler = ModelRuntime(sessions, choose_device(settings.device)).handler(info.active_version_id)
    engine.dispose()
    rates: dict[str, float] = {}
    for size in sizes:
        inputs = [make_input(i) for i in range(size)]
        handler.predict([handler.prepare(x) for x in inputs])  # warm up this shape
        done, started = 0, time.perf_counter()
        while time.perf_counter() - started < seconds_each:
            handler.predict([handler.prepare(x) for x in inputs])
            done += size
        rates[str(size)] = round(done / (time.perf_counter() - started), 1)
    return rates
