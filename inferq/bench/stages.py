"""Where one job's time went, stage by stage, from what its client saw and the server said.

A submit with ``Prefer: wait`` answered in one round trip carries all it takes: the API's
``Server-Timing`` (``accept``: received → committed, ``publish``: → handed to the broker,
``wait``: → woken with its result, ``app``: the whole request inside the API) and the job's
own timestamps (``fetched_at``: its worker received the message, ``started_at``: its batch
claimed it, ``completed_at``: its result was stored, and ``predict_ms``). The client adds
when it sent the request and when the answer arrived. Every clock is this host's
(benchmarks run on one machine), and the stages add up to the client's latency:

- ``client → api``: half the time outside the API process (nginx and the loopback, both ways)
- ``api → committed``: authentication, validation, gates, the job's INSERT and commit
- ``committed → published``: the group publisher handing it to the broker
- ``published → fetched``: in the broker, until the worker's consumer received it
- ``fetched → batch start``: in the worker's batch buffer, and the claim
- ``batch start → predicted``: the model (the batch's ``predict_ms``)
- ``predicted → stored``: the rest of the batch's predictions and the results' commit
- ``stored → woken``: the worker announcing the completion, the signal through Redis, the
  API process's listener waking the waiting request
- ``woken → answered``: the answer built and sent, and the other half of the way back

Each stage is timed by one process except ``published → fetched`` (the API's end of
``publish``, the worker's arrival time) and ``stored → woken`` (Postgres's time of the store,
the API's end of ``wait``). Either can come out slightly negative on a busy machine: the
worker received the message before the API thread that published it ran again to note the
time, or the half-way split of the time outside the API put its start a little late.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Mapping, Sequence
from typing import Any

from inferq.bench.summary import percentile

STAGES = (
    "client → api",
    "api → committed",
    "committed → published",
    "published → fetched",
    "fetched → batch start",
    "batch start → predicted",
    "predicted → stored",
    "stored → woken",
    "woken → answered",
)


def server_timing(header: str | None) -> dict[str, float]:
    """``Server-Timing`` as ``{name: dur}`` in milliseconds (entries without a dur left out)."""
    steps: dict[str, float] = {}
    for entry in (header or "").split(","):
        name, *params = (part.strip() for part in entry.split(";"))
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "dur" and name:
                with contextlib.suppress(ValueError):
                    steps[name] = float(value.strip().strip('"'))
    return steps


def breakdown(
    sent_at: float, latency_ms: float, timing: Mapping[str, float], job: Mapping[str, Any]
) -> dict[str, float] | None:
    """The stages of one job (milliseconds, in :data:`STAGES` order), or None when the answer
    lacks what they need (a 202 polled after, a cached result, a server without the fields).

    ``sent_at``: Unix seconds when the client sent the submit; ``latency_ms``: until its
    answer arrived; ``timing``: the submit's ``Server-Timing``; ``job``: the answer's body.
    """
    needed = ("accept", "publish", "wait", "app")
    if (
        job.get("status") != "succeeded"
        or job.get("cached")
        or not all(k in timing for k in needed)
    ):
        return None
    try:
        fetched = _unix(job["fetched_at"])
        started = _unix(job["started_at"])
        completed = _unix(job["completed_at"])
    except (KeyError, TypeError, ValueError):
        return None
    predict_ms = (job.get("metrics") or {}).get("predict_ms")
    if not isinstance(predict_ms, (int, float)):
        return None
    half_way_ms = (latency_ms - timing["app"]) / 2
    api_start = sent_at + half_way_ms / 1000
    published = api_start + (timing["accept"] + timing["publish"]) / 1000
    woken = published + timing["wait"] / 1000
    answered = sent_at + latency_ms / 1000
    values = (
        half_way_ms,
        timing["accept"],
        timing["publish"],
        (fetched - published) * 1000,
        (started - fetched) * 1000,
        float(predict_ms),
        (completed - started) * 1000 - predict_ms,
        (woken - completed) * 1000,
        (answered - woken) * 1000,
    )
    return {name: round(value, 3) for name, value in zip(STAGES, values, strict=True)}


def medians(breakdowns: Sequence[Mapping[str, float]]) -> dict[str, float | None]:
    """Each stage's p50 over ``breakdowns`` (None for a stage none of them has)."""
    return {name: percentile([b[name] for b in breakdowns if name in b], 50) for name in STAGES}


def table(rows: Sequence[tuple[str, Mapping[str, float | None]]]) -> str:
    """A plain-text table: one column per labelled set of stage p50s (``rows``)."""
    width = max(len(name) for name in STAGES)
    lines = [" " * width + "".join(f"{label:>12}" for label, _ in rows)]
    for name in STAGES:
        cells = "".join(
            f"{'-' if values.get(name) is None else format(values[name], '.2f'):>12}"
            for _, values in rows
        )
        lines.append(f"{name:<{width}}{cells}")
    return "\n".join(lines)


def _unix(value: Any) -> float:
    if value is None:
        raise ValueError("no timestamp")
    return dt.datetime.fromisoformat(str(value)).timestamp()
