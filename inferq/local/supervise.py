"""supervisord for the local stack: its config, and starting and stopping it.

supervisord runs the stack's long-lived processes: it restarts what crashes, keeps a log per
program and stops them in order. This module knows supervisord; :mod:`inferq.local.stack` decides
what it runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import os
import secrets
import shlex
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path

import psutil

#: Longest unix socket path the kernel takes (sun_path is 108 bytes with its NUL).
MAX_SOCKET_PATH = 107


@dataclasses.dataclass(frozen=True)
class SupervisorPaths:
    """supervisord's config, pid, socket and logs, under one absolute ``home``."""

    home: Path

    conf = property(lambda self: self.home / "supervisord.conf")
    pidfile = property(lambda self: self.home / "supervisord.pid")
    logs = property(lambda self: self.home / "logs")

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
    stopsignal: str = "TERM"


def stop_timeout(progs: Sequence[Program], margin: float = 5.0) -> float:
    """How long supervisord may take to stop ``progs``: it stops one group after another."""
    longest: dict[str, int] = {}
    for program in progs:
        key = program.group or program.name
        longest[key] = max(longest.get(key, 0), program.stopwaitsecs)
    return sum(longest.values()) + margin


def supervisord_conf(
    paths: SupervisorPaths, progs: Sequence[Program], password: str | None = None
) -> str:
    """The text of ``supervisord.conf`` for ``progs``, with state and logs under ``paths``.

    Programs inherit supervisord's environment, set by ``inferq up``, rather than get an
    ``environment=`` line: supervisord's parser of it cannot quote every value a URL may hold.
    The control socket takes a user and ``password`` (random unless given), which the
    ``[supervisorctl]`` section carries too: ``supervisorctl -c supervisord.conf`` works, and
    supervisord has no unauthenticated socket to warn about (its CRIT line at every start).
    """
    sections = [_main_sections(paths, password or secrets.token_urlsafe(24))]
    sections += [_program_section(paths, program) for program in progs]
    sections += _group_sections(progs)
    return "\n\n".join(sections) + "\n"


def _main_sections(paths: SupervisorPaths, password: str) -> str:
    # Naming root when we are root stops supervisord's CRIT about running as root, by choice.
    user = "user=root\n" if os.getuid() == 0 else ""
    return f"""\
[unix_http_server]
file={_esc(paths.socket)}
chmod=0700
username=inferq
password={_esc(password)}

[supervisord]
{user}nodaemon=true
logfile={_esc(paths.logs / "supervisord.log")}
pidfile={_esc(paths.pidfile)}
childlogdir={_esc(paths.logs)}
loglevel=info

[rpcinterface:supervisor]
supervisor.rpcinterface_factory = supervisor.rpcinterface:make_main_rpcinterface

[supervisorctl]
serverurl=unix://{_esc(paths.socket)}
username=inferq
password={_esc(password)}"""


def _program_section(paths: SupervisorPaths, program: Program) -> str:
    command = " ".join(shlex.quote(arg) for arg in program.argv)
    return f"""\
[program:{program.name}]
command={_esc(command)}
priority={program.priority}
autorestart=true
startsecs=2
startretries=5
stopsignal={program.stopsignal}
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


def start_supervisor(
    paths: SupervisorPaths, progs: Sequence[Program], env: Mapping[str, str]
) -> subprocess.Popen[bytes]:
    """Write ``supervisord.conf`` and start supervisord on it in the foreground, with ``env``."""
    paths.logs.mkdir(exist_ok=True)
    # Owner-only: it holds the control socket's password.
    paths.conf.unlink(missing_ok=True)
    fd = os.open(paths.conf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(supervisord_conf(paths, progs))
    argv = [sys.executable, "-m", "supervisor.supervisord", "-n", "-c", str(paths.conf)]
    # Its own session, like the embedded servers: on Ctrl-C we stop it, in order.
    return subprocess.Popen(
        argv,
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=sys.stderr.fileno(),
        start_new_session=True,
    )


def stop_supervisor(supervisor: subprocess.Popen[bytes], timeout: float) -> None:
    """SIGTERM supervisord and wait; past ``timeout``, kill it and every program it runs."""
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
