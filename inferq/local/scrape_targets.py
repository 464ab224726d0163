"""Prometheus metrics ports for ``inferq up``: one per worker and for the scheduler, and a
file_sd file naming every ``/metrics`` of the stack.

API nodes serve ``/metrics`` on their own port; workers and the scheduler get a free
loopback port each (``--metrics-port``), and ``INFERQ_HOME/prometheus-targets.json`` lists
them all for a Prometheus on this host (``file_sd_configs``).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from inferq.local.embedded import free_port
from inferq.local.supervise import Program

#: Commands that serve metrics on a port of their own, and the scrape job of each.
JOBS = {"worker": "inferq-workers", "beat": "inferq-scheduler"}


def assign_ports(
    progs: Sequence[Program], launcher: Sequence[str]
) -> tuple[list[Program], dict[str, int]]:
    """``progs`` with ``--metrics-port`` given to each worker and the scheduler, and the port
    each of those programs got (by program name)."""
    ports: dict[str, int] = {}
    out = []
    for program in progs:
        if command_of(program, launcher) in JOBS:
            ports[program.name] = free_port()
            argv = (*program.argv, "--metrics-port", str(ports[program.name]))
            program = dataclasses.replace(program, argv=argv)
        out.append(program)
    return out, ports


def command_of(program: Program, launcher: Sequence[str]) -> str:
    """The ``inferq`` command a program runs (``worker``, ``beat``…), wherever the launcher
    stands in its argv: a prefix such as ``nice -n 10`` comes before it."""
    argv, size = program.argv, len(launcher)
    for start in range(len(argv) - size):
        if tuple(argv[start : start + size]) == tuple(launcher):
            return argv[start + size]
    return ""


def write_targets(
    path: Path,
    api_ports: Iterable[int],
    progs: Sequence[Program],
    ports: Mapping[str, int],
    launcher: Sequence[str],
) -> None:
    """Write every ``/metrics`` of the stack to ``path`` as Prometheus file_sd targets."""
    groups: dict[str, list[str]] = {"inferq-api": [f"127.0.0.1:{p}" for p in api_ports]}
    for program in progs:
        if program.name in ports:
            job = JOBS[command_of(program, launcher)]
            groups.setdefault(job, []).append(f"127.0.0.1:{ports[program.name]}")
    document = [{"targets": targets, "labels": {"job": job}} for job, targets in groups.items()]
    path.write_text(json.dumps(document, indent=2) + "\n")
