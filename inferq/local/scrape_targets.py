"""Prometheus metrics ports for ``inferq up``: one per worker, for the scheduler and for the
autoscaler, and a file_sd file naming every ``/metrics`` of the stack.

API nodes serve ``/metrics`` on their own port; workers, the scheduler and the autoscaler get
a free loopback port each (``--metrics-port``), and ``INFERQ_HOME/prometheus-targets.json``
lists them all for a Prometheus on this host (``file_sd_configs``). The workers that the
autoscaler starts and stops come and go: it keeps a group of its own in that file up to date
(``--metrics-targets``, :func:`inferq.core.scrape.set_group`), which Prometheus reads
again when it changes.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

from inferq.core.scrape import WORKERS_JOB, free_ports
from inferq.local.supervise import Program

#: Commands that serve metrics on a port of their own, and the scrape job of each.
JOBS = {"worker": WORKERS_JOB, "beat": "inferq-scheduler", "autoscaler": "inferq-autoscaler"}


def assign_ports(
    progs: Sequence[Program],
    launcher: Sequence[str],
    targets: Path | None = None,
    avoid: Iterable[int] = (),
) -> tuple[list[Program], dict[str, int]]:
    """``progs`` with ``--metrics-port`` given to each worker, the scheduler and the
    autoscaler, and the port each of those programs got (by program name): distinct, and
    none of ``avoid`` (the stack's public and API ports). The autoscaler is also told to
    list the workers it starts in ``targets`` (``--metrics-targets``)."""
    measured = sum(1 for program in progs if command_of(program, launcher) in JOBS)
    free = iter(free_ports(measured, avoid=avoid))
    ports: dict[str, int] = {}
    out = []
    for program in progs:
        command = command_of(program, launcher)
        if command in JOBS:
            ports[program.name] = next(free)
            argv = (*program.argv, "--metrics-port", str(ports[program.name]))
            if command == "autoscaler" and targets is not None:
                argv += ("--metrics-targets", str(targets))
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
