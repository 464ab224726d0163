"""The long-poll benchmark's client (inferq.bench.longpoll._hold) against a local server
that answers a long-poll with the job, with a problem, or with nothing it can read."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections import Counter

from inferq.bench.longpoll import Poll, _hold

JOB = "0190c0de-0000-7000-8000-000000000001"


async def hold_against_local_server(waiters: int, hold_s: float) -> tuple[list[Poll], list[bytes]]:
    heads: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                heads.append(await reader.readuntil(b"\r\n\r\n"))
                way = len(heads) % 3
                if way == 0:  # the job, as a long-poll whose wait ran out answers it
                    body = json.dumps({"id": JOB, "status": "queued"}).encode()
                    writer.write(
                        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                        b"Server-Timing: read;dur=1.5, app;dur=12500\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body) + body
                    )
                elif way == 1:  # a problem
                    body = b'{"status": 503, "title": "Service Unavailable"}'
                    writer.write(
                        b"HTTP/1.1 503 Service Unavailable\r\n"
                        b"Content-Type: application/problem+json\r\n"
                        b"Content-Length: %d\r\n\r\n" % len(body) + body
                    )
                else:  # no answer it can read (a closed connection would be retried)
                    writer.write(b"HTTP/1.1 two hundred\r\n\r\n")
                    await writer.drain()
                    break
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    async with server:
        polls = await _hold(f"http://127.0.0.1:{port}", "k3y", JOB, waiters, 0.2, hold_s)
    return polls, heads


def test_each_long_poll_is_recorded_with_what_its_answer_said() -> None:
    polls, heads = asyncio.run(hold_against_local_server(waiters=2, hold_s=1.5))
    # Every request was the long-poll of the job, with its wait and its key
    assert heads
    assert all(
        head.startswith(f"GET /v1/jobs/{JOB}?wait=0.2 HTTP/1.1\r\n".encode())
        and b"\r\nAuthorization: Bearer k3y\r\n" in head
        for head in heads
    )
    by_status = Counter(p.status for p in polls)
    assert set(by_status) == {0, 200, 503}
    # An answered long-poll carries its job's status and the API process's own time
    assert all(
        p.job_status == "queued" and p.server_seconds == 12.5 for p in polls if p.status == 200
    )
    # a problem's "status" is not taken for the job's
    assert all(p.job_status is None for p in polls if p.status == 503)
    # and a request answered with nothing readable is a poll with no answer
    assert all(p.job_status is None and p.server_seconds is None for p in polls if p.status == 0)
