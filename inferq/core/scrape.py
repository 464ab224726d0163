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
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


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
