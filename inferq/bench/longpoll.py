"""The long-poll scenario: thousands of clients long-polling a queued job while others submit.

Issue 16's goal: with 5,000 concurrent long-polls every long-poll answers within its wait
plus 1 s, the submitters' p99 stays within 1.5 times its value without the long-polls, and
nothing is a 5xx. The submitters run alone (the baseline), again once the long-polls are all
open, and alone once more after the last long-poll closed: the baseline is the mean of the
two runs alone, so that the machine's drift over the minutes between them does not count.

The long-polls run in a process of their own (one asyncio loop holding every connection), so
their client-side work does not delay the submitters' loop and inflate what they measure.
They wait on a *parked* job: one submitted to the batch lane, which stays queued on a stack
without batch workers (``inferq up --batch-workers 0``). Their starts are spread over one
wait, so their re-polls arrive evenly instead of all at once every wait.
"""

from __future__ import annotations

import asyncio
import dataclasses
import multiprocessing
import resource
import time
from collections import Counter
from typing import Any

import aiohttp

from inferq.bench.stages import server_timing

#: How much later than its wait a long-poll may answer (the issue's bound).
GRACE_S = 1.0


@dataclasses.dataclass(frozen=True)
class Poll:
    """One long-poll as its client saw it: HTTP status (0: no answer), seconds, job status,
    and the seconds its API process said it spent on it (``Server-Timing: app``; None when
    the answer did not say)."""

    status: int
    seconds: float
    job_status: str | None
    server_seconds: float | None = None


def server_seconds(header: str | None) -> float | None:
    """The API process's own time for a request, from its ``Server-Timing`` header."""
    app = server_timing(header).get("app")
    return None if app is None else app / 1000


def raise_open_files_limit(needed: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; raise ``RuntimeError`` when
    even that is below ``needed`` sockets."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        soft = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    if soft < needed:
        raise RuntimeError(
            f"this process may open {soft} files, and {needed} connections are needed: "
            "raise the hard limit (ulimit -Hn) first"
        )
    return soft


async def park(url: str, key: str, model: str, payload: dict[str, Any]) -> str:
    """Submit the job the long-polls wait on (batch lane) and check that it stays queued."""
    headers = {"Authorization": f"Bearer {key}"}
    body = {"model": model, "input": payload, "lane": "batch"}
    async with aiohttp.ClientSession(headers=headers) as session:
        async with session.post(f"{url}/v1/jobs", json=body) as response:
            job = await response.json(content_type=None)
            if response.status != 202:
                raise RuntimeError(f"submitting the parked job: {response.status} {job}")
        await asyncio.sleep(2.0)
        async with session.get(f"{url}/v1/jobs/{job['id']}") as response:
            job = await response.json(content_type=None)
    if job.get("status") != "queued":
        raise RuntimeError(
            f"the parked job is {job.get('status')}, not queued: run this against a stack "
            "without batch workers (inferq up --batch-workers 0)"
        )
    return str(job["id"])


async def _hold(
    url: str, key: str, job_id: str, waiters: int, wait_s: float, stop_after_s: float
) -> list[Poll]:
    """``waiters`` clients long-polling ``job_id`` again and again for ``stop_after_s``."""
    polls: list[Poll] = []
    started = time.monotonic()
    stop_at = started + stop_after_s
    params = {"wait": f"{wait_s:g}"}

    async def client(session: aiohttp.ClientSession, n: int) -> None:
        await asyncio.sleep(n * wait_s / waiters)  # spread over one wait
        while time.monotonic() < stop_at:
            sent = time.monotonic()
            try:
                async with session.get(f"{url}/v1/jobs/{job_id}", params=params) as response:
                    job = await response.json(content_type=None)
                    took = time.monotonic() - sent
                    app = server_seconds(response.headers.get("Server-Timing"))
                    # a problem's "status" is its HTTP status, not the job's
                    job_status = job.get("status") if response.status == 200 else None
                    polls.append(Poll(response.status, took, job_status, app))
            except (aiohttp.ClientError, asyncio.TimeoutError, ValueError):
                polls.append(Poll(0, time.monotonic() - sent, None))
                await asyncio.sleep(1.0)

    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    timeout = aiohttp.ClientTimeout(total=wait_s + 30, connect=30)
    headers = {"Authorization": f"Bearer {key}"}
    async with aiohttp.ClientSession(
        headers=headers, connector=connector, timeout=timeout
    ) as session:
        await asyncio.gather(*(client(session, n) for n in range(waiters)))
    return polls


def _hold_in_child(conn: Any, *args: Any) -> None:
    try:
        raise_open_files_limit(args[3] + 64)
        polls = asyncio.run(_hold(*args))
        conn.send([dataclasses.astuple(p) for p in polls])
    except Exception as exc:  # the parent reports it
        conn.send(exc)
    finally:
        conn.close()


class LongPolls:
    """The long-polls, held by a child process from :meth:`start` until :meth:`result`."""

    def __init__(self, url: str, key: str, job_id: str, waiters: int, wait_s: float) -> None:
        self.args = (url, key, job_id, waiters, wait_s)
        self._context = multiprocessing.get_context("spawn")
        self._conn, child = self._context.Pipe(duplex=False)
        self._child_conn = child
        self._proc: Any = None

    def start(self, hold_s: float) -> None:
        """Open the long-polls (over one wait) and keep them going for ``hold_s`` seconds."""
        self._proc = self._context.Process(
            target=_hold_in_child, args=(self._child_conn, *self.args, hold_s), daemon=True
        )
        self._proc.start()
        self._child_conn.close()

    def result(self) -> list[Poll]:
        """Every long-poll answered, once the last ones come back."""
        found = self._conn.recv()
        self._proc.join(timeout=30)
        if isinstance(found, Exception):
            raise found
        return [Poll(*row) for row in found]


def p99_ratio(
    beside: dict[str, Any], before: dict[str, Any], after: dict[str, Any]
) -> float | None:
    """The submits' p99 beside the long-polls over their p99 alone: the mean of a run before
    the long-polls open and one after they close, or the one that has a p99 (None when the
    run beside them, or both alone, had no successful submit)."""
    loaded = beside["latency_ms"]["p99"]
    alone = [run["latency_ms"]["p99"] for run in (before, after) if run["latency_ms"]["p99"]]
    if not loaded or not alone:
        return None
    return float(loaded / (sum(alone) / len(alone)))


def report(polls: list[Poll], wait_s: float) -> dict[str, Any]:
    """What the long-polls saw: answers by status, how late they were, the goal's verdict."""
    from inferq.bench.summary import summary

    late = [p for p in polls if p.seconds > wait_s + GRACE_S]
    in_server = [p.server_seconds for p in polls if p.server_seconds is not None]
    return {
        "answered": len(polls),
        "http_status": {str(k): v for k, v in sorted(Counter(p.status for p in polls).items())},
        "job_status": dict(Counter(str(p.job_status) for p in polls)),
        "seconds": summary([p.seconds for p in polls]),
        "late_over_wait_plus_1s": len(late),
        # Where the late ones lost their time: in the API process, or outside it (nginx,
        # the network, the load generator's own loop on a busy machine).
        "server_seconds": summary(in_server),
        "late_in_the_api_process": sum(
            1 for p in late if p.server_seconds is not None and p.server_seconds > wait_s + GRACE_S
        ),
        "server_errors": sum(1 for p in polls if p.status >= 500),
        "no_answer": sum(1 for p in polls if p.status == 0),
    }
