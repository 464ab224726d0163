"""Is this worker really consuming? Its event loop marks itself alive every second.

A worker whose broker connection dropped and never came back, or whose loop is stuck
outside a batch, stops marking. The heartbeat reports it, and after ``stall_exit_s`` the
worker exits so its supervisor (supervisord, Docker, Kubernetes) replaces it; the
reconciler and the broker return what it held.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from celery import bootsteps


class Liveness:
    """The last time the consumer loop ran, and whether a batch is running now."""

    def __init__(self, grace_s: float = 60.0) -> None:
        # Until the loop first marks, count from start-up (model loading takes a while).
        self._last_mark = time.monotonic() + grace_s
        self._busy = 0
        self._lock = threading.Lock()
        self._started = threading.Event()
        #: Called once, at the first mark (the heartbeat announces it at once).
        self.on_start: Callable[[], None] = lambda: None

    def mark(self) -> None:
        """Called from the consumer's event loop."""
        self._last_mark = time.monotonic()
        if not self._started.is_set():
            self._started.set()
            self.on_start()

    def started(self) -> bool:
        """Whether the consumer loop has run yet: its queues are being consumed."""
        return self._started.is_set()

    def enter(self) -> None:
        """A batch starts: the loop is blocked on purpose (solo pool), not stalled."""
        with self._lock:
            self._busy += 1

    def leave(self) -> None:
        """The batch ended: the loop runs again."""
        with self._lock:
            self._busy = max(0, self._busy - 1)
        self.mark()

    @contextmanager
    def busy(self) -> Iterator[None]:
        """Busy for the duration of the block (see :meth:`enter`)."""
        self.enter()
        try:
            yield
        finally:
            self.leave()

    def stalled_for(self) -> float:
        """Seconds since the loop last ran outside a batch (0 while a batch runs)."""
        if self._busy:
            return 0.0
        return max(0.0, time.monotonic() - self._last_mark)


def loop_marker(liveness: Liveness) -> type[bootsteps.StartStopStep]:
    """A consumer bootstep that marks ``liveness`` from the event loop every second."""

    class LoopMarker(bootsteps.StartStopStep):
        requires = {"celery.worker.consumer.tasks:Tasks"}

        def start(self, consumer: Any) -> None:
            self._timer = consumer.timer.call_repeatedly(1.0, liveness.mark)

        def stop(self, consumer: Any) -> None:
            timer = getattr(self, "_timer", None)
            if timer is not None:
                timer.cancel()

    return LoopMarker
