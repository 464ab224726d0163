"""Serving the API with gunicorn.

``gevent`` workers: each request is a greenlet, so a waiting long-poll costs a socket and a
few kilobytes, not a thread, and holds no database connection. gunicorn's gevent worker
monkey-patches the standard library before it loads the app, so the completion listener and
the group publisher (``threading.Thread``) run as greenlets, their ``Event``/``Condition``
waits and redis-py's and kombu's sockets yield, and SQLAlchemy's pool queues its checkouts
cooperatively; psycopg2, a C extension, is made to yield by psycogreen (:meth:`ApiServer.load`).
redis-py's zero-timeout check before each command is the one call kept off the hub
(:func:`plain_readiness_checks`).
With ``gthread`` workers a long-poll parked a thread for its whole wait: 200 of them took
a node down (issue 16). nginx's upstream keep-alive is honoured either way.
"""

from __future__ import annotations

import json
import os
import resource
import select
import shutil
import socket
from pathlib import Path
from typing import Any

from gunicorn import util as gunicorn_util
from gunicorn.app.base import BaseApplication
from gunicorn.http import wsgi as gunicorn_wsgi

from inferq.core.settings import Settings


class ApiServer(BaseApplication):
    """gunicorn configured from settings instead of a config file."""

    def __init__(self, settings: Settings, bind: str) -> None:
        self.settings = settings
        self.options = {
            "bind": bind,
            "workers": settings.api.api_processes,
            "worker_class": "gevent",
            "worker_connections": settings.api.api_connections,
            # A long-poll may legitimately hold a request for max_wait_s.
            "timeout": int(settings.api.max_wait_s) + 30,
            "graceful_timeout": int(settings.api.max_wait_s) + 5,
            "keepalive": 75,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": settings.log_level.lower(),
            "proc_name": f"inferq-api {bind}",
            "child_exit": _child_exit,
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)
        # gunicorn answers what it refuses before Flask sees it (a request line over 4094
        # bytes, over 100 headers, a bad header) with an HTML page; whatever the worker class,
        # it writes that page through this one function.
        gunicorn_util.write_error = write_problem
        # Every answer's head and body in one send (see OneSendResponse); gunicorn makes its
        # responses through this one name, whatever the worker class.
        gunicorn_wsgi.Response = OneSendResponse

    def load(self) -> Any:
        from api.app import create_app

        _cooperative_psycopg()
        plain_readiness_checks()
        app = create_app(self.settings)
        tune_collector()
        return app


#: The API's garbage collector thresholds (Python's are 700, 10, 10). See tune_collector.
API_GC_THRESHOLDS = (10_000, 50, 100)


def tune_collector() -> None:
    """Keep Python's cycle collector from pausing an API process for long, or often.

    Each full collection walks every live object, and the process holds many: those made
    loading the app (about 130,000), and those of every request in flight, since a waiting
    long-poll keeps its request alive for up to ``max_wait_s``. With 5,000 long-polls held
    and 64 clients submitting, a process tracked 364,000 objects, and each full collection
    stopped it for about 0.2 s; the submits beside them had a p99 3.5 times their own. So:
    the objects of the loaded app are frozen (never walked again; they live as long as the
    process), and the young generation is collected after 10,000 allocations, not 700, so a
    request's short-lived objects die before a collection sees them and fewer survive to
    the older generations, whose collections are rarer too. In the same run the collector
    then took 0.22 s in all instead of 2.6 s, and no full collection ran. Reference counting
    frees everything that is not in a cycle at once either way.
    """
    import gc

    gc.freeze()
    gc.set_threshold(*API_GC_THRESHOLDS)


class OneSendResponse(gunicorn_wsgi.Response):
    """gunicorn's response, sending its status line and headers with the body's bytes.

    gunicorn sends the head of every answer, then each piece of its body, one ``send`` each.
    A JSON answer of a few hundred bytes then crossed the loopback as two segments, and
    nginx woke twice to read it. Here a body of known length that comes in one piece (every
    answer Flask builds from JSON) goes out with its head in one ``send``. Anything else
    (a streamed or chunked body, a file, an answer without a body) goes gunicorn's way.
    """

    # What gunicorn's Response sets in __init__ and start_response, named for the checker.
    headers_sent: bool
    chunked: bool
    response_length: int | None
    sent: int
    status_code: int

    def write(self, arg: bytes) -> None:
        if (
            self.headers_sent
            or self.chunked
            or not isinstance(arg, bytes)
            or len(arg) != self.response_length
            or self.req.method == "HEAD"
            or self.status_code in (204, 304)
        ):
            super().write(arg)
            return
        head = self.default_headers()
        head.extend(f"{name}: {value}\r\n" for name, value in self.headers)
        head.append("\r\n")
        self.headers_sent = True
        self.sent += len(arg)
        gunicorn_util.write(self.sock, "".join(head).encode("latin-1") + arg)


def write_problem(sock: Any, status_int: int, reason: str, mesg: str) -> None:
    """gunicorn's own error answer as an RFC 9457 problem (never echoing the request)."""
    body = json.dumps(
        {
            "type": f"https://inferq.dev/problems/http-{status_int}",
            "title": reason,
            "status": status_int,
            "detail": f"The server refused the request: {reason.lower()}.",
        }
    ).encode()
    head = (
        f"HTTP/1.1 {status_int} {reason}\r\nConnection: close\r\n"
        f"Content-Type: application/problem+json\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode("latin-1")
    gunicorn_util.write_nonblock(sock, head + body)
    _drain(sock)


def _drain(sock: Any) -> None:
    # gunicorn closes the connection next. Closing with request bytes still unread makes the
    # kernel reset it, and a reset can destroy the answer before the client reads it (the
    # gevent worker refuses a long request line after reading only part of it): say we are
    # done writing, and read what is left first, briefly.
    try:
        sock.shutdown(socket.SHUT_WR)
        sock.settimeout(0.5)
        for _ in range(16):
            if not sock.recv(65536):
                break
    except OSError:
        pass


def serve(settings: Settings, host: str, port: int) -> None:
    """Run an API node in the foreground."""
    metrics_dir(settings, port)
    raise_open_files_limit()
    ApiServer(settings, f"{host}:{port}").run()


def raise_open_files_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit (its children inherit it):
    every waiting long-poll holds a socket. Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    return soft


def _cooperative_psycopg() -> None:
    # Only where gevent has patched the process (its gunicorn worker does, before load):
    # psycopg2 then waits for the server through gevent instead of blocking the process.
    from gevent import monkey

    if monkey.is_module_patched("socket"):
        from psycogreen.gevent import patch_psycopg

        patch_psycopg()


def metrics_dir(settings: Settings, port: int) -> Path:
    """Give this node an empty Prometheus multiprocess directory and point
    ``PROMETHEUS_MULTIPROC_DIR`` at it, before any process imports prometheus_client.

    One directory per node (per port): values left by an earlier run, or by another node,
    would be added to this node's.
    """
    path = (settings.home / "metrics" / f"api-{port}").resolve()
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(path)
    return path


def _child_exit(server: Any, worker: Any) -> None:
    # A dead process's live gauges (requests in progress) must stop counting.
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def plain_readiness_checks() -> bool:
    """In a gevent process, let redis-py's check before each command go straight to poll(2).

    redis-py asks, before every command, whether the pooled connection holds unread data: a
    poll with a zero timeout. gevent's cooperative poll makes that a watcher per socket, a
    result object and a trip through the hub: 7 % of an API process's CPU under load
    (py-spy), for a call that cannot block. Here a zero timeout uses the system's poll and
    any wait stays cooperative. Returns whether the check was changed (only in a patched
    process, with the hiredis parser whose check this is).
    """
    from gevent import monkey

    if not monkey.is_module_patched("select"):
        return False
    try:
        from redis._parsers import hiredis as parser
    except ImportError:
        return False
    if not hasattr(parser, "_socket_can_read"):
        return False  # a redis-py that checks some other way
    if not isinstance(parser.select, _ReadinessSelect):
        parser.select = _ReadinessSelect(monkey.get_original("select", "poll"))  # type: ignore[assignment]
    return True


class _ReadinessSelect:
    """The ``select`` module as redis-py's parser sees it: :class:`_ReadinessPoll` for
    ``poll``, the real module for everything else."""

    def __init__(self, system_poll: Any) -> None:
        self._system_poll = system_poll

    def poll(self) -> _ReadinessPoll:
        return _ReadinessPoll(self._system_poll)

    def __getattr__(self, name: str) -> Any:
        return getattr(select, name)


class _ReadinessPoll:
    """A poll object that picks its implementation when polled: the system's for a zero
    timeout (it returns at once), gevent's cooperative one for a wait."""

    def __init__(self, system_poll: Any) -> None:
        self._system_poll = system_poll
        self._registered: list[tuple[Any, int]] = []

    def register(self, fd: Any, eventmask: int) -> None:
        self._registered.append((fd, eventmask))

    def poll(self, timeout: float | None = None) -> list[tuple[int, int]]:
        poller = self._system_poll() if timeout == 0 else select.poll()
        for fd, eventmask in self._registered:
            poller.register(fd, eventmask)
        found: list[tuple[int, int]] = poller.poll(timeout)
        return found
