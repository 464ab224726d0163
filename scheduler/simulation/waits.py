"""Queue waits as weighted segments, and their percentiles.

A fluid queue serves a group of jobs at once; within a group the wait runs linearly from
``lo`` to ``hi``, so the group is ``count`` jobs spread uniformly over ``[lo, hi]``. A
percentile is found by bisection on the exact distribution these segments describe.
"""

from __future__ import annotations

import numpy as np


class WaitLog:
    """Segments of waits, with the tick each was served in."""

    def __init__(self) -> None:
        self._lo: list[float] = []
        self._hi: list[float] = []
        self._n: list[float] = []
        self._at: list[float] = []

    def add(self, lo: float, hi: float, count: float, at: float) -> None:
        """``count`` jobs whose waits spread evenly from ``lo`` to ``hi`` seconds."""
        if count > 0:
            self._lo.append(max(0.0, min(lo, hi)))
            self._hi.append(max(0.0, lo, hi))
            self._n.append(count)
            self._at.append(at)

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """``(lo, hi, count, served_at)`` as arrays."""
        return (np.asarray(self._lo), np.asarray(self._hi), np.asarray(self._n),
                np.asarray(self._at))  # fmt: skip


def share_within(lo: np.ndarray, hi: np.ndarray, n: np.ndarray, x: float) -> float:
    """The share of jobs that waited at most ``x`` seconds."""
    total = float(n.sum())
    if total == 0:
        return 1.0
    width = hi - lo
    flat = width <= 0
    ramp = np.clip((x - lo) / np.where(flat, 1.0, width), 0.0, 1.0)
    part = np.where(flat, (lo <= x).astype(float), ramp)
    return float((n * part).sum() / total)


def percentile(lo: np.ndarray, hi: np.ndarray, n: np.ndarray, q: float) -> float:
    """The wait that a share ``q`` (0..1) of jobs did not exceed (0 when no job was served)."""
    if len(n) == 0 or float(n.sum()) == 0:
        return 0.0
    low, high = 0.0, float(hi.max())
    for _ in range(60):
        mid = (low + high) / 2
        if share_within(lo, hi, n, mid) >= q:
            high = mid
        else:
            low = mid
    return high
