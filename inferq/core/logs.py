"""Structured JSON logs, one object per line, with whatever ``extra`` a call site gives."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import threading
import time
from typing import Any, TextIO

import orjson

_STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """Render a record as a JSON object: time, level, logger, message and extras.

    An API node formats a line per request: the record goes to orjson (what it cannot
    encode, such as an integer past 64 bits, to the standard library), and the time's
    seconds are formatted once a second, a third of the standard library's cost per line.
    """

    def __init__(self) -> None:
        super().__init__()
        self._stamp = (-1, "")  # a second and its text, swapped as one

    def format(self, record: logging.LogRecord) -> str:
        second, text = self._stamp
        if second != int(record.created):
            second = int(record.created)
            text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._stamp = (second, text)
        body: dict[str, Any] = {
            "ts": f"{text}.{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD:
                body[key] = value
        if record.exc_info:
            body["exception"] = self.formatException(record.exc_info)
        try:
            return orjson.dumps(body, default=str).decode()
        except TypeError:  # orjson.JSONEncodeError is one
            return json.dumps(body, default=str)


class BufferedHandler(logging.StreamHandler[TextIO]):
    """Writes records to ``stream`` without flushing each one: the buffer goes out every
    ``flush_every_s``, when it fills, and at once for a warning or worse (nginx's
    ``access_log ... buffer= flush=``).

    An API node logs a line per request; a write and a flush per line were a twentieth of its
    CPU under load. A process killed outright loses at most ``flush_every_s`` of lines; one
    that exits cleanly loses none (logging flushes its handlers at exit).
    """

    def __init__(self, stream: TextIO, flush_every_s: float) -> None:
        super().__init__(stream)
        self._flush_every_s = flush_every_s
        self._pid = 0  # the process whose flusher runs (gunicorn forks after configuring)
        self._closed = threading.Event()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.stream.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)
        if self._pid != os.getpid():
            self._pid = os.getpid()
            threading.Thread(
                target=self._flush_forever, name="inferq-log-flush", daemon=True
            ).start()

    def close(self) -> None:
        """Stop the flusher and write out what is buffered."""
        self._closed.set()
        with contextlib.suppress(OSError, ValueError):  # closed already
            self.flush()
        super().close()

    def _flush_forever(self) -> None:
        while not self._closed.wait(self._flush_every_s):
            try:
                self.flush()
            except (OSError, ValueError):  # the stream went away (closed, a broken pipe)
                return


def configure(level: str = "INFO", flush_every_s: float = 0) -> None:
    """Send every logger's records to stderr as JSON; with ``flush_every_s``, buffered
    (BufferedHandler) instead of flushed line by line.

    A record no longer gathers two things no line here carries (JsonFormatter leaves the
    standard fields out, and gunicorn's and Celery's own formats name neither): its thread
    and its calling frame (the logging HOWTO's "Optimization"). In a gevent API process,
    naming a request's thread made gevent build a dummy thread for its greenlet on every
    access line: 1.5 % of a submit's CPU. (The process id and name stay: gunicorn's and
    Celery's formats print them.)"""
    logging.logThreads = False
    logging._srcfile = None  # the HOWTO's documented switch
    handler: logging.Handler
    if flush_every_s > 0:
        stream = open(  # noqa: SIM115 (the handler owns it)
            sys.stderr.fileno(), "w", buffering=1 << 16, encoding="utf-8", closefd=False
        )
        handler = BufferedHandler(stream, flush_every_s)
    else:
        handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def info(message: str) -> None:
    """Human-facing progress of a command goes to stderr, keeping stdout for results."""
    print(message, file=sys.stderr, flush=True)
