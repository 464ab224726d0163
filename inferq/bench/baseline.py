"""In-process baselines: the same model version predicting without any queue in between."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

from inferq.core.handlers import ModelHandler

BATCH_SIZES = (1, 2, 4, 8, 16, 32, 64, 128)


def in_process_throughput(
    handler: ModelHandler,
    make_input: Callable[[int], dict[str, Any]],
    sizes: Sequence[int] = BATCH_SIZES,
    seconds_each: float = 1.0,
) -> dict[str, float]:
    """Inputs/s of a loaded ``handler`` at each batch size (prepare + predict)."""
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
