"""JSON log lines: an API node's are buffered and written out every flush interval, a warning
at once, and none is lost when the process exits (inferq.core.logs)."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import time

import pytest

from inferq.core.logs import BufferedHandler, JsonFormatter


@pytest.fixture
def pipe() -> tuple[logging.Logger, int]:
    """A logger whose only handler buffers into a pipe, and the pipe's read end."""
    read, write = os.pipe()
    os.set_blocking(read, False)
    stream = open(write, "w", buffering=1 << 16, encoding="utf-8")  # noqa: SIM115
    handler = BufferedHandler(stream, flush_every_s=0.3)
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger(f"test-buffered-{read}")
    logger.propagate = False
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    yield logger, read
    handler.close()
    stream.close()
    os.close(read)


def lines(read: int) -> list[dict[str, object]]:
    try:
        raw = os.read(read, 1 << 16)
    except BlockingIOError:
        return []
    return [json.loads(line) for line in raw.decode().splitlines()]


def test_info_lines_wait_for_the_flush_and_a_warning_goes_out_at_once(
    pipe: tuple[logging.Logger, int],
) -> None:
    logger, read = pipe
    # When two requests are logged
    logger.info("request", extra={"status": 202})
    logger.info("request", extra={"status": 200})
    # Then nothing was written yet
    assert lines(read) == []
    # and a warning takes them out with it, in order
    logger.warning("dependency unavailable")
    assert [(r["message"], r.get("status")) for r in lines(read)] == [
        ("request", 202),
        ("request", 200),
        ("dependency unavailable", None),
    ]
    # and a later info line goes out within the flush interval on its own
    logger.info("request", extra={"status": 404})
    deadline = time.monotonic() + 5
    found: list[dict[str, object]] = []
    while not found and time.monotonic() < deadline:
        time.sleep(0.05)
        found = lines(read)
    assert [r.get("status") for r in found] == [404]


def test_lines_still_buffered_are_written_when_the_process_exits() -> None:
    # Given a process that buffers for a minute, logs, and exits normally at once
    script = (
        "import logging; from inferq.core.logs import configure\n"
        "configure('INFO', flush_every_s=60)\n"
        "for i in range(3): logging.getLogger('x').info('request', extra={'n': i})\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    # Then its three lines reached stderr
    logged = [json.loads(line) for line in done.stderr.splitlines()]
    assert [r["n"] for r in logged] == [0, 1, 2]


def test_a_line_logged_from_a_greenlet_builds_no_thread_for_it() -> None:
    """Catches: records that name their thread (JSON lines never carry it): in a gevent API
    process each access line then built a dummy thread for its request's greenlet."""
    script = """
import gevent.monkey
gevent.monkey.patch_all()
import io, json, logging, sys, gevent, gevent.threading
from inferq.core import logs
built = []
real = gevent.threading._DummyThread.__init__
def counting(self, *args, **kwargs):
    built.append(1)
    real(self, *args, **kwargs)
gevent.threading._DummyThread.__init__ = counting
logs.configure("INFO")
out = io.StringIO()
logging.getLogger().handlers[0].setStream(out)
log = logging.getLogger("inferq.api.access")
gevent.joinall([gevent.spawn(log.info, "request", extra={"n": n}) for n in range(20)])
lines = [json.loads(line) for line in out.getvalue().splitlines()]
print(json.dumps({"built": len(built), "lines": lines}))
"""
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    found = json.loads(done.stdout)
    assert found["built"] == 0
    assert sorted(line["n"] for line in found["lines"]) == list(range(20))
    assert {line["message"] for line in found["lines"]} == {"request"}
    assert all("thread" not in line and "threadName" not in line for line in found["lines"])


def _record(created: float, **extra: object) -> logging.LogRecord:
    record = logging.LogRecord(
        "inferq.access", logging.INFO, __file__, 1, "request %s", ("a",), None
    )
    record.created = created
    record.msecs = (created - int(created)) * 1000
    record.__dict__.update(extra)
    return record


def test_a_line_carries_its_own_time_level_logger_message_and_extras() -> None:
    formatter = JsonFormatter()
    # Records a second apart, then one back in an earlier second (another thread's)
    times = [1_780_000_000.25, 1_780_000_000.75, 1_780_000_001.5, 1_780_000_000.999]
    lines = [json.loads(formatter.format(_record(t, status=202, path="/v1/jobs"))) for t in times]
    assert [line["ts"] for line in lines] == [
        time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(int(t))) + f".{int(t % 1 * 1000):03d}Z"
        for t in times
    ]
    assert lines[0] == {
        "ts": lines[0]["ts"],
        "level": "info",
        "logger": "inferq.access",
        "message": "request a",
        "status": 202,
        "path": "/v1/jobs",
    }


def test_what_orjson_cannot_write_still_makes_a_line() -> None:
    formatter = JsonFormatter()
    big = 2**70
    line = json.loads(formatter.format(_record(1_780_000_000.0, big=big, thing=object())))
    assert line["big"] == big
    assert line["thing"].startswith("<object object at")
    try:
        raise ValueError("boom")
    except ValueError:
        record = _record(1_780_000_000.0)
        record.exc_info = sys.exc_info()
    line = json.loads(formatter.format(record))
    assert "ValueError: boom" in line["exception"]
