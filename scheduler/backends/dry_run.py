"""A backend that only remembers and logs what it would do (``--backend dry-run``)."""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


class DryRunBackend:
    """Pretends to run ``start`` workers and follows every decision without acting."""

    name = "dry-run"

    def __init__(self, start: int = 0) -> None:
        self._count = start

    def current(self) -> int:
        return self._count

    def scale(self, desired: int, busy: frozenset[str]) -> None:
        log.info("dry run: would scale %d -> %d", self._count, desired)
        self._count = desired

    def close(self) -> None:
        pass
