"""The bench's stage breakdown: parsed from what a client sees, adding up to its latency."""

from __future__ import annotations

import pytest

from inferq.bench import stages

SENT = 1_765_000_000.0


def answer(**overrides: object) -> dict[str, object]:
    """A job answered in one round trip: fetched 3 ms after the request reached the API, its
    batch started 2 ms later, predicted in 0.5 ms, stored 1 ms after that."""
    body: dict[str, object] = {
        "status": "succeeded",
        "cached": False,
        "fetched_at": "2025-12-06T05:46:40.004000+00:00",
        "started_at": "2025-12-06T05:46:40.006000+00:00",
        "completed_at": "2025-12-06T05:46:40.007500+00:00",
        "metrics": {"predict_ms": 0.5},
    }
    body.update(overrides)
    return body


def test_server_timing_is_read_as_durations() -> None:
    header = 'accept;dur=1.5, publish;desc="x";dur=0.25, cache;desc=hit, app;dur="9"'
    assert stages.server_timing(header) == {"accept": 1.5, "publish": 0.25, "app": 9.0}
    assert stages.server_timing(None) == {}
    assert stages.server_timing("accept;dur=fast") == {}


def test_the_stages_add_up_to_the_latency_in_order() -> None:
    timing = {"accept": 1.0, "publish": 0.5, "wait": 6.0, "app": 8.0}
    # 1 ms each way outside the API; the API received it at SENT + 1 ms (05:46:40.001)
    got = stages.breakdown(SENT, 10.0, timing, answer())
    assert got is not None
    assert list(got) == list(stages.STAGES)
    assert got == pytest.approx(
        {
            "client → api": 1.0,
            "api → committed": 1.0,
            "committed → published": 0.5,
            "published → fetched": 1.5,  # 4.0 - (1.0 + 1.0 + 0.5)
            "fetched → batch start": 2.0,
            "batch start → predicted": 0.5,
            "predicted → stored": 1.0,
            "stored → woken": 1.0,  # woken at 1.0 + 1.0 + 0.5 + 6.0 = 8.5 ms, stored at 7.5
            "woken → answered": 1.5,  # the rest of app (0.5) and the way back (1.0)
        },
        abs=1e-3,
    )
    assert sum(got.values()) == pytest.approx(10.0, abs=1e-3)


@pytest.mark.parametrize(
    "job, timing",
    [
        # polled after
        (answer(status="queued"), {"accept": 1, "publish": 1, "wait": 1, "app": 3}),
        (answer(cached=True), {"accept": 1, "publish": 1, "wait": 1, "app": 3}),
        # an older worker
        (answer(fetched_at=None), {"accept": 1, "publish": 1, "wait": 1, "app": 3}),
        (answer(metrics={}), {"accept": 1, "publish": 1, "wait": 1, "app": 3}),
        (answer(), {"accept": 1, "app": 2}),  # a server without Server-Timing steps
        (answer(), {"accept": 1, "publish": 1, "app": 2}),  # no wait: not one round trip
        (answer(started_at="soon"), {"accept": 1, "publish": 1, "wait": 1, "app": 3}),
    ],
)
def test_an_answer_without_what_the_stages_need_has_none(
    job: dict[str, object], timing: dict[str, float]
) -> None:
    assert stages.breakdown(SENT, 10.0, timing, job) is None


def test_medians_and_the_table() -> None:
    rows = [dict.fromkeys(stages.STAGES, float(n)) for n in (1, 2, 9)]
    medians = stages.medians(rows)
    assert set(medians.values()) == {2.0}
    table = stages.table([("1 clients", medians), ("8 clients", {})])
    lines = table.splitlines()
    assert len(lines) == 1 + len(stages.STAGES)
    assert lines[1].split()[-2:] == ["2.00", "-"]


@pytest.mark.parametrize("model", ["digits", "embed"])
def test_bench_inputs_differ_within_a_run_and_between_runs(model: str) -> None:
    """A second bench run against the same stack must not be answered from the result cache
    (checked against the fixed seeds the makers had: the second run's inputs were the
    first's)."""
    from inferq.bench.inputs import inputs_for

    first, second = inputs_for(model, None), inputs_for(model, None)
    run = [first(n) for n in range(50)]
    assert len({repr(i) for i in run}) == 50
    assert all(second(n) != run[n] for n in range(50))


def test_a_samples_stages_add_up_to_the_latency_it_reports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Catches: the latency read from the clock once for the stages and again for the sample,
    so that the two differ by whatever ran in between (0.5 ms once on a busy machine). Here
    every reading of the clock moves it on by 2 ms."""
    import asyncio
    import json
    import time

    from inferq.bench import load

    body = json.dumps({"id": "j", **answer()}).encode()

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await reader.read(1)  # the body has begun; the rest is not needed
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Server-Timing: accept;dur=1, publish;dur=0.5, wait;dur=5, app;dur=8\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        await writer.drain()
        writer.close()

    ticks = iter(range(10**6))
    real = time.perf_counter

    async def run() -> load.Sample:
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        target = load.Target(f"http://127.0.0.1:{port}", "k", "digits", lambda n: {}, "wait")
        try:
            async with load._session(target, 1) as session:
                monkeypatch.setattr(load.time, "perf_counter", lambda: next(ticks) * 0.002)
                try:
                    return await load.run_job(session, target, 0)
                finally:
                    monkeypatch.setattr(load.time, "perf_counter", real)
        finally:
            server.close()

    sample = asyncio.run(run())
    assert sample.ok and sample.stages is not None
    assert sum(sample.stages.values()) == pytest.approx(sample.latency_ms, abs=0.01)
