"""Prometheus file_sd groups and loopback ports for ``/metrics``, shared by the launcher
(``inferq up`` writes the stack's targets) and the local autoscaler backend (which keeps the
group of the workers it starts current)."""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Mapping
from pathlib import Path

#: The scrape job of every worker, fixed or started by an autoscaler.
WORKERS_JOB = "inferq-workers"


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port nobody listens on right now (the OS picks it)."""
    return free_ports(1, host)[0]


def free_ports(count: int, host: str = "127.0.0.1", avoid: Iterable[int] = ()) -> list[int]:
    """``count`` distinct TCP ports nobody listens on right now, none of them in ``avoid``
    (ports already promised to a program that has not bound them yet). Each is held until
    all are chosen: a port let go may be the OS's next pick, so picking one at a time can
    hand the same port to two programs."""
    avoided = set(avoid)
    held: list[socket.socket] = []
    chosen: list[int] = []
    try:
        while len(chosen) < count:
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            held.append(sock)
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
            if port not in avoided:
                chosen.append(port)
    finally:
        for sock in held:
            sock.close()
    return chosen


def set_group(path: Path, labels: Mapping[str, str], targets: Iterable[str]) -> None:
    """Make the group of ``path`` labelled ``labels`` hold ``targets`` (none: no group), the
    other groups as they are. The file is replaced whole, so Prometheus never reads half
    of it."""
    try:
        document = json.loads(path.read_text())
    except (OSError, ValueError):
        document = []
    kept = [group for group in document if group.get("labels") != dict(labels)]
    wanted = sorted(targets)
    if wanted:
        kept.append({"targets": wanted, "labels": dict(labels)})
    partial = path.with_name(f".{path.name}.{os.getpid()}")
    partial.write_text(json.dumps(kept, indent=2) + "\n")
    os.replace(partial, path)
