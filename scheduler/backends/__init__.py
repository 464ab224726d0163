"""Where the autoscaler's decisions take effect: one module per way of running workers.

Every backend scales down drain-safely: it stops idle workers before busy ones, and stops a
worker with SIGTERM (Celery's warm shutdown: stop consuming, finish the running batch, give
prefetched messages back to the broker) with a grace period, never with SIGKILL first.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Protocol


class Backend(Protocol):
    """Runs some number of workers of one pool."""

    name: str

    def current(self) -> int:
        """Workers running or starting now, those draining excluded."""

    def scale(self, desired: int, busy: frozenset[str]) -> None:
        """Run ``desired`` workers; ``busy`` are identities of workers running a job now."""

    def close(self) -> None:
        """Release connections (and, for ``local``, stop the workers it started)."""


def holds(busy: Iterable[str], *, name: str | None = None, host: str | None = None) -> bool:
    """Whether a worker named ``name`` (or on host ``host``) is among ``busy`` identities.

    A worker's identity is ``<name>@<host>/<incarnation>`` (see ``workers.service``).
    """
    for identity in busy:
        if name is not None and identity.startswith(f"{name}@"):
            return True
        if host is not None and f"@{host}/" in identity:
            return True
    return False


def idle_first(
    candidates: list[str], busy: frozenset[str], count: int, *, by_host: bool = False
) -> list[str]:
    """``count`` of ``candidates`` to stop: idle ones first, newest first within each kind."""

    def is_busy(c: str) -> bool:
        return holds(busy, host=c) if by_host else holds(busy, name=c)

    ordered = sorted(reversed(candidates), key=is_busy)  # stable: newest first, idle first
    return ordered[:count]
