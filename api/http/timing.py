"""``Server-Timing`` (W3C): where a request's time went inside its API process.

A route marks the end of each step (:func:`step`); every response then says how long each
step took and the whole request did (``app``), in milliseconds, from the moment the process
began the request::

    Server-Timing: accept;dur=1.92, publish;dur=0.61, wait;dur=5.30, app;dur=8.02

A submit with ``Prefer: wait`` marks ``accept`` (validated, gated and committed),
``publish`` (handed to the broker) and ``wait`` (answered by its worker). Browsers' developer
tools show the header, and ``inferq bench`` builds its stage breakdown from it.
"""

from __future__ import annotations

import time

from flask import g


def step(name: str) -> None:
    """The step ``name`` of this request ends now."""
    now = time.perf_counter()
    steps = g.setdefault("timing_steps", [])
    since = steps[-1][1] if steps else g.get("started", now)
    steps.append((name, now, (now - since) * 1000))


def header(total_ms: float) -> str:
    """The ``Server-Timing`` value: each step's duration, then the request's (``app``)."""
    parts = [f"{name};dur={ms:.3f}" for name, _, ms in g.get("timing_steps", ())]
    parts.append(f"app;dur={total_ms:.3f}")
    return ", ".join(parts)
