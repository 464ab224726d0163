"""The local stack behind ``inferq up``: embedded services, one-time setup, and supervisord.

This module decides what runs and drives the stack's life. supervisord runs the API, workers
and beat: it restarts what crashes, keeps a log per program and stops them in order.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import hashlib
import json
import os
import shlex
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from inferq.cli.common import info
from inferq.embedded import EmbeddedService, reachable, start_missing, stop_stale
from inferq.errors import InferqError
from inferq.settings import Settings

#: How supervisord runs our commands: this interpreter, so children import the same inferq.
LAUNCHER = (sys.executable, "-m", "inferq")
READY_TIMEOUT_S = 60.0
DOWN_TIMEOUT_S = 90.0
DEV_SCOPES = ("submit", "read", "admin")
#: Longest unix socket path the kernel takes (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107


class StackError(InferqError):
    """Raised when the local stack cannot start, is already running, or will not stop."""


class Stopped(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM; unwinds ``inferq up`` into its shutdown."""


@dataclasses.dataclass(frozen=True)
class StackPaths:
    """Where the stack keeps its state, all under one absolute ``home``."""

    home: Path

    conf = property(lambda self: self.home / "supervisord.conf")
    pidfile = property(lambda self: self.home / "supervisord.pid")
    logs = property(lambda self: self.home / "logs")
    up_json = property(lambda self: self.home / "up.json")
    api_key = property(lambda self: self.home / "dev-api-key")

    @property
    def socket(self) -> Path:
        """supervisord's control socket: in home unless that path is too long for a socket."""
        path = self.home / "supervisor.sock"
        if len(str(path)) <= MAX_SOCKET_PATH:
            return path
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        return Path(tempfile.gettempdir()) / f"inferq-{digest}.sock"


@dataclasses.dataclass(frozen=True)
class Program:
    """One long-running process that supervisord keeps up."""

    name: str
    argv: tuple[str, ...]
    #: supervisord starts low numbers first and stops high numbers first.
    priority: int
    stopwaitsecs: int
    stopasgroup: bool = True
    group: str | None = None


def programs(settings: Settings, launcher: Sequence[str] = LAUNCHER) -> list[Program]:
    """Everything the stack runs: workers first, then beat, then the API that accepts work."""
    launcher = tuple(launcher)
    beat = Program("beat", (*launcher, "beat"), priority=200, stopwaitsecs=5)
    return [*worker_programs(settings, launcher), beat, *api_programs(settings, launcher)]


def api_programs(settings: Settings, launcher: tuple[str, ...]) -> list[Program]:
    """The API: one node on the public port (nginx in front of several nodes comes later)."""
    argv = (*launcher, "api", "--host", "127.0.0.1", "--port", str(settings.port))
    return [Program("api", argv, priority=300, stopwaitsecs=10)]


def worker_programs(settings: Settings, launcher: tuple[str, ...]) -> list[Program]:
    """``settings.workers`` Celery workers, in one group so that they stop together."""
    # SIGTERM goes to the worker's main process alone: a prefork pool's children reset SIGTERM
    # to its default and would die mid-job if the whole group got it, while the parent's warm
    # shutdown lets them finish. killasgroup still removes them all after stopwaitsecs.
    return [
        Program(
            f"worker-{i}",
            (*launcher, "worker", "--name", f"worker-{i}"),
            priority=100,
            stopwaitsecs=30,
            stopasgroup=False,
            group="workers",
        )
        for i in range(1, settings.workers + 1)
    ]


def stop_timeout(progs: Sequence[Program], margin: float = 5.0) -> float:
    """How long supervisord may take to stop ``progs``: it stops one group after another."""
    longest: dict[str, int] = {}
    for program in progs:
        key = program.group or program.name
        longest[key] = max(longest.get(key, 0), program.stopwaitsecs)
    return sum(longest.values()) + margin


def supervisord_conf(paths: StackPaths, progs: Sequence[Program]) -> str:
    """The text of ``supervisord.conf`` for ``progs``, with state and logs under ``paths``.

    Programs inherit supervisord's environment, set by ``inferq up``, rather than get an
    ``environment=`` line: supervisord's parser of it cannot quote every value a URL may hold.
    """
    sections = [_main_sections(paths)]
    sections += [_program_section(paths, program) for program in progs]
    sections += _group_sections(progs)
    return "\n\n".join(sections) + "\n"


def _main_sections(paths: StackPaths) -> str:
    # Naming root when we are root stops supervisord's CRIT about running as root, by choice.
    user = "user=root\n" if os.getuid() == 0 else ""
    return f"""\
[unix_http_server]
file={_esc(paths.socket)}
chmod=0700

[supervisord]
{user}nodaemon=true
logfile={_esc(paths.logs / "supervisord.log")}
pidfile={_esc(paths.pidfile)}
childlogdir={_esc(paths.logs)}
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{_esc(paths.socket)}"""


def _program_section(paths: StackPaths, program: Program) -> str:
    command = " ".join(shlex.quote(arg) for arg in program.argv)
    return f"""\
[program:{program.name}]
command={_esc(command)}
priority={program.priority}
autorestart=true
startsecs=2
startretries=5
stopsignal=TERM
stopwaitsecs={program.stopwaitsecs}
stopasgroup={str(program.stopasgroup).lower()}
killasgroup=true
redirect_stderr=true
stdout_logfile={_esc(_esc(paths.logs / f"{program.name}.log"))}"""


def _group_sections(progs: Sequence[Program]) -> list[str]:
    groups = {p.group: [q for q in progs if q.group == p.group] for p in progs if p.group}
    return [
        f"[group:{name}]\nprograms={','.join(p.name for p in members)}\n"
        f"priority={members[0].priority}"
        for name, members in groups.items()
    ]


def _esc(value: object) -> str:
    # supervisord expands %(name)s in values, so a literal percent sign is written twice. It
    # expands a program's log file names twice over, hence _esc(_esc(...)) for those.
    return str(value).replace("%", "%%")


def run(settings: Settings, on_ready: Callable[[], None] = lambda: None) -> int:
    """Run the whole stack in the foreground until SIGINT, SIGTERM or ``inferq down``.

    ``on_ready`` runs once the API answers. Returns the exit status: 0 after a requested stop,
    1 when supervisord died on its own.
    """
    paths = StackPaths(settings.home.resolve())
    paths.home.mkdir(parents=True, exist_ok=True)
    claim(paths, settings.port)
    services: list[EmbeddedService] = []
    supervisor: subprocess.Popen[bytes] | None = None
    progs = programs(settings)
    _on_stop_signals(_raise_stopped)
    try:
        # claim() found no live `inferq up` here, so a supervisord still running from this home
        # was left behind by one that crashed.
        stop_stale(paths.pidfile, "supervisord", timeout=stop_timeout(progs))
        if reachable("127.0.0.1", settings.port):  # else we would take its /readyz for our API's
            raise StackError(f"port {settings.port} is taken; choose another with --port")
        settings = dataclasses.replace(settings, home=paths.home)
        settings = start_missing(settings, paths.home, services, announce=info)
        prepare(settings, paths)
        supervisor = start_supervisor(settings, paths, progs)
        return serve(f"http://127.0.0.1:{settings.port}", paths, supervisor, on_ready)
    except Stopped:
        return 0
    finally:
        # The shutdown is bounded; a second Ctrl-C must not cut it short and orphan processes.
        _on_stop_signals(signal.SIG_IGN)
        shutdown(supervisor, services, paths, stop_timeout(progs))


def prepare(settings: Settings, paths: StackPaths) -> None:
    """Migrate the database, make sure ``digits`` has an active version, and issue a dev key."""
    from db.migrate import upgrade
    from inferq.cli.models_cmds import train_model

    info("migrating the database")
    upgrade(settings.require_database_url())
    train_model(settings, "digits", if_missing=True)
    ensure_dev_key(settings, paths.api_key)


def ensure_dev_key(settings: Settings, path: Path) -> None:
    """Keep the key in ``path`` when the database knows it; otherwise issue one for tenant dev."""
    from db.keys import create_key, ensure_tenant, find_key
    from inferq.cli.common import db_session

    existing = path.read_text().strip() if path.exists() else ""
    with db_session(settings) as session:
        if existing and find_key(session, existing) is not None:
            return
        plaintext, _ = create_key(session, ensure_tenant(session, "dev"), DEV_SCOPES)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(plaintext)
    info(f"created a development API key (tenant dev, scopes {', '.join(DEV_SCOPES)}) in {path}")


def start_supervisor(
    settings: Settings, paths: StackPaths, progs: Sequence[Program]
) -> subprocess.Popen[bytes]:
    """Write ``supervisord.conf`` and start supervisord on it in the foreground."""
    paths.logs.mkdir(exist_ok=True)
    paths.conf.write_text(supervisord_conf(paths, progs))
    argv = [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(paths.conf)]
    # Its own session, like the embedded servers: on Ctrl-C we stop it, in order.
    return subprocess.Popen(
        argv,
        env={**os.environ, **settings.to_env()},
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr.fileno(),
        start_new_session=True,
    )


def serve(
    url: str, paths: StackPaths, supervisor: subprocess.Popen[bytes], on_ready: Callable[[], None]
) -> int:
    """Wait for the API to be ready, call ``on_ready``, then wait on supervisord (1 if it dies)."""
    wait_ready(url, supervisor, paths)
    on_ready()
    status = supervisor.wait()
    info(f"error: supervisord exited with status {status}; see {paths.logs / 'supervisord.log'}")
    return 1


def wait_ready(url: str, supervisor: subprocess.Popen[bytes], paths: StackPaths) -> None:
    """Poll ``url/readyz`` until it answers 200; raise when supervisord dies or time runs out."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if supervisor.poll() is not None:
            raise StackError(f"supervisord exited early; see {paths.logs / 'supervisord.log'}")
        # urlopen raises for any answer but 2xx (HTTPError and URLError are OSErrors).
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/readyz", timeout=2):
            return
        time.sleep(0.5)
    log = paths.logs / "api.log"
    raise StackError(f"the API at {url} was not ready after {READY_TIMEOUT_S:.0f} s; see {log}")


def shutdown(
    supervisor: subprocess.Popen[bytes] | None,
    services: Sequence[EmbeddedService],
    paths: StackPaths,
    timeout: float,
) -> None:
    """Stop supervisord (and with it every program), then the embedded servers, newest first."""
    if supervisor is not None and supervisor.poll() is None:
        info(f"stopping inferq (up to {timeout:.0f} s while workers finish their jobs)")
        _stop_supervisor(supervisor, timeout)
    for service in reversed(services):
        try:
            service.stop()
        except Exception as exc:  # one stuck server must not keep the others running
            info(f"warning: could not stop embedded {service.name}: {exc}")
    release(paths)


def _stop_supervisor(supervisor: subprocess.Popen[bytes], timeout: float) -> None:
    supervisor.terminate()
    try:
        supervisor.wait(timeout)
    except subprocess.TimeoutExpired:
        # Killed, supervisord would orphan its programs: take them down with it.
        with contextlib.suppress(psutil.Error):
            for child in psutil.Process(supervisor.pid).children(recursive=True):
                child.kill()
        supervisor.kill()
        supervisor.wait()


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


def _on_stop_signals(handler: Callable[[int, Any], None] | signal.Handlers) -> None:
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def claim(paths: StackPaths, port: int) -> None:
    """Record this process in ``up.json``, or refuse when another ``inferq up`` uses this home."""
    running = read_running(paths)
    if running is not None:
        raise StackError(
            f"inferq is already running from {paths.home} at {running['url']} "
            f"(pid {running['pid']}); stop it with `inferq down`"
        )
    me = psutil.Process()
    record = {
        "url": f"http://127.0.0.1:{port}",
        "pid": me.pid,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "create_time": me.create_time(),
    }
    paths.up_json.write_text(json.dumps(record, indent=2) + "\n")


def release(paths: StackPaths) -> None:
    """Remove ``up.json`` when it is this process's."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(paths.up_json.read_text()).get("pid") == os.getpid():
            paths.up_json.unlink()


def read_running(paths: StackPaths) -> dict[str, Any] | None:
    """The ``up.json`` record of a live ``inferq up``, or None (a stale record counts as none)."""
    try:
        record: dict[str, Any] = json.loads(paths.up_json.read_text())
        process = psutil.Process(int(record["pid"]))
        # A pid alone may have been reused since; its start time may not.
        same = abs(process.create_time() - float(record["create_time"])) < 1.0
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
    return record if same else None


def down(home: Path, timeout: float = DOWN_TIMEOUT_S) -> dict[str, Any] | None:
    """Ask the ``inferq up`` using ``home`` to stop, and wait until it has.

    Returns its ``up.json`` record, or None when nothing runs there.
    """
    paths = StackPaths(home.resolve())
    record = read_running(paths)
    if record is None:
        paths.up_json.unlink(missing_ok=True)
        return None
    process = psutil.Process(int(record["pid"]))
    with contextlib.suppress(psutil.NoSuchProcess):
        process.terminate()
    if not _gone_within(process, timeout):
        raise StackError(f"inferq up (pid {process.pid}) still runs after {timeout:.0f} s")
    return record


def _gone_within(process: psutil.Process, timeout: float) -> bool:
    # Not psutil's wait(): `up` is not our child, and once it exits it stays a zombie until its
    # parent (a shell, a test) reaps it; an exited process is what we wait for.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False
