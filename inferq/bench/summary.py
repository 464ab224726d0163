"""Percentiles and histograms for bench reports."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) by nearest rank, or None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, math.ceil(q / 100 * len(ordered)) - 1)
    return round(ordered[rank], 3)


def summary(values: Sequence[float]) -> dict[str, float | None]:
    """p50, p90, p99, max and mean."""
    return {
        "p50": percentile(values, 50),
        "p90": percentile(values, 90),
        "p99": percentile(values, 99),
        "max": round(max(values), 3) if values else None,
        "mean": round(sum(values) / len(values), 3) if values else None,
    }


def histogram(values: Sequence[int | None]) -> dict[str, int]:
    """Counts per value, in value order (keys as strings, for JSON)."""
    counts = Counter(v for v in values if v is not None)
    return {str(k): counts[k] for k in sorted(counts)}
