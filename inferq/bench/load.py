"""Load generation with asyncio: closed loop (``--concurrency``) or open loop (``--rate``).

Each simulated client submits a job and gets its result in one round trip
(``Prefer: wait``), or submits and then long-polls (``--mode poll``).
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp

from inferq.bench import stages

WAIT_S = 30


@dataclasses.dataclass(frozen=True)
class Sample:
    """One job as the client saw it, with the server's own timings."""

    ok: bool
    latency_ms: float
    status: str
    queue_ms: float | None = None
    predict_ms: float | None = None
    total_ms: float | None = None
    batch_size: int | None = None
    cached: bool = False
    #: where its time went (``inferq.bench.stages``), for a job answered in one round trip
    stages: dict[str, float] | None = None


@dataclasses.dataclass(frozen=True)
class Target:
    """Where and what to send."""

    url: str
    key: str
    model: str
    make_input: Callable[[int], dict[str, Any]]
    mode: str = "wait"  # "wait": Prefer: wait; "poll": submit, then long-poll


async def run_job(session: aiohttp.ClientSession, target: Target, n: int) -> Sample:
    """Submit job ``n`` and follow it to a terminal status."""
    headers = {"Prefer": f"wait={WAIT_S}"} if target.mode == "wait" else {}
    body = {"model": target.model, "input": target.make_input(n)}
    sent_at, started = time.time(), time.perf_counter()
    try:
        async with session.post(f"{target.url}/v1/jobs", json=body, headers=headers) as response:
            job = await response.json(content_type=None)
            if response.status >= 400:
                return Sample(False, _ms(started), f"http {response.status}")
            timing = stages.server_timing(response.headers.get("Server-Timing"))
        # One reading of the clock for both: a job answered in one trip is broken into
        # stages that add up to exactly the latency its sample reports.
        latency_ms = _ms(started)
        one_trip = stages.breakdown(sent_at, latency_ms, timing, job)
        while job.get("status") in ("queued", "running"):
            async with session.get(
                f"{target.url}/v1/jobs/{job['id']}", params={"wait": str(WAIT_S)}
            ) as response:
                job = await response.json(content_type=None)
            latency_ms = _ms(started)
    except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
        return Sample(False, _ms(started), type(exc).__name__)
    metrics = job.get("metrics") or {}
    return Sample(
        ok=job.get("status") == "succeeded",
        latency_ms=latency_ms,
        status=str(job.get("status")),
        queue_ms=metrics.get("queue_ms"),
        predict_ms=metrics.get("predict_ms"),
        total_ms=metrics.get("total_ms"),
        batch_size=metrics.get("batch_size"),
        cached=bool(job.get("cached")),
        stages=one_trip,
    )


def _ms(started: float) -> float:
    return (time.perf_counter() - started) * 1000


def _session(target: Target, connections: int) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {target.key}"},
        connector=aiohttp.TCPConnector(limit=connections),
        timeout=aiohttp.ClientTimeout(total=WAIT_S * 3),
    )


async def closed_loop(
    target: Target, concurrency: int, duration_s: float, tick: Callable[[], None]
) -> list[Sample]:
    """``concurrency`` clients, each sending its next job when the last one finished."""
    samples: list[Sample] = []
    deadline = time.perf_counter() + duration_s
    counter = iter(range(10**9))

    async def client(session: aiohttp.ClientSession) -> None:
        while time.perf_counter() < deadline:
            samples.append(await run_job(session, target, next(counter)))
            tick()

    async with _session(target, concurrency) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return samples


async def open_loop(
    target: Target,
    rate: float,
    duration_s: float,
    tick: Callable[[], None],
    max_in_flight: int = 2000,
) -> list[Sample]:
    """Poisson arrivals at ``rate`` jobs/s whatever the latency (bounded in flight)."""
    samples: list[Sample] = []
    rng = random.Random(7)
    pending: set[asyncio.Task[None]] = set()

    async def one(session: aiohttp.ClientSession, n: int) -> None:
        samples.append(await run_job(session, target, n))
        tick()

    async with _session(target, max_in_flight) as session:
        started = time.perf_counter()
        n, next_at = 0, started
        while next_at < started + duration_s:
            await asyncio.sleep(max(0.0, next_at - time.perf_counter()))
            if len(pending) < max_in_flight:
                task = asyncio.create_task(one(session, n))
                pending.add(task)
                task.add_done_callback(pending.discard)
            n += 1
            next_at += rng.expovariate(rate)
        if pending:
            await asyncio.gather(*pending)
    return samples


async def trivial_rps(url: str, concurrency: int, duration_s: float) -> float:
    """Requests/s of ``GET /healthz`` (no auth, no database) through the same front door."""
    done = 0
    deadline = time.perf_counter() + duration_s

    async def client(session: aiohttp.ClientSession) -> None:
        nonlocal done
        while time.perf_counter() < deadline:
            async with session.get(f"{url}/healthz") as response:
                await response.read()
                done += response.status == 200

    started = time.perf_counter()
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        await asyncio.gather(*(client(session) for _ in range(concurrency)))
    return done / (time.perf_counter() - started)
