"""Arrival profiles: jobs/s over a simulated period, as a share of the peak.

A profile is drawn on one day (86,400 s) and stretched over whatever ``--duration`` asks
for, so a short run keeps the day's shape. ``day``: a diurnal curve from 2% of the peak at
04:00 to 10% at 16:00, with a 10x burst at 16:00 for 15 minutes (one-minute ramps) that
reaches the peak; ``diurnal``: the same curve from 20% to 100% with no burst; ``burst``: 10%
all day with the same burst; ``flat``: the peak all day.
"""

from __future__ import annotations

import math
from collections.abc import Callable

DAY_S = 86_400.0
BURST_AT_S = 16 * 3600.0
BURST_LEN_S = 15 * 60.0
RAMP_S = 60.0
BURST_FACTOR = 10.0


def _wave(day_s: float, low: float, high: float) -> float:
    """A cosine day: ``low`` at 04:00, ``high`` at 16:00."""
    phase = 2 * math.pi * (day_s - 4 * 3600.0) / DAY_S
    return low + (high - low) * (1 - math.cos(phase)) / 2


def _burst(day_s: float) -> float:
    """1 outside the burst, ``BURST_FACTOR`` inside it, linear ramps at both ends."""
    into = day_s - BURST_AT_S
    if into < 0 or into > BURST_LEN_S:
        return 1.0
    edge = min(into, BURST_LEN_S - into, RAMP_S) / RAMP_S
    return 1.0 + (BURST_FACTOR - 1.0) * edge


PROFILES: dict[str, Callable[[float], float]] = {
    "day": lambda s: _wave(s, 0.02, 0.1) * _burst(s),
    "diurnal": lambda s: _wave(s, 0.2, 1.0),
    "burst": lambda s: 0.1 * _burst(s),
    "flat": lambda s: 1.0,
}


def rate(profile: str, t: float, duration_s: float, peak: float) -> float:
    """Jobs/s at simulated second ``t`` of a run of ``duration_s`` whose peak is ``peak``."""
    return peak * PROFILES[profile](DAY_S * (t / duration_s))
