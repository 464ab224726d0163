"""Group commit for any round trip: one thread does, for many requests at once, what each
request would otherwise do alone.

A request hands its item over and waits. The group's thread takes every item handed over
while its previous round trip was in flight, up to ``max_group``, and runs them as one. By
default there is no timer: at light load an item goes alone at once, under load the groups
grow by themselves. Work that may wait a little (``gather_s``) lets each group fill for that
long before it runs. Each request gets back its own outcome (a result, or what failed it)
and returns only once its group has run, so the caller's guarantee is what it was without
grouping.

Used by the broker publisher (api.services.publisher) and the submit insert
(api.services.inserter), and, gathering, by the reads of long-polls whose wait ran out
(api.services.progress).
"""

from __future__ import annotations

import logging
import os
import threading
import time
from typing import Generic, TypeVar

log = logging.getLogger(__name__)

T = TypeVar("T")

_UNSET = object()

#: A group thread with nothing handed over for this long ends (another starts on demand).
IDLE_EXIT_S = 5.0


class NotTaken(Exception):
    """Raised when no group took an item within its queue timeout (it was withdrawn)."""


class Pending(Generic[T]):
    """One item waiting for its group: the group's runner sets its ``result`` or ``error``."""

    __slots__ = ("done", "error", "item", "result", "taken")

    def __init__(self, item: T) -> None:
        self.item = item
        self.done = threading.Event()
        self.taken = False  # into a group: from then on it may take effect
        self.result: object = _UNSET
        self.error: BaseException | None = None

    @property
    def settled(self) -> bool:
        """Whether the runner gave this item an outcome."""
        return self.error is not None or self.result is not _UNSET


class GroupThread(Generic[T]):
    """Items handed over by many threads, run in groups by one thread of its own per process.

    Subclasses implement :meth:`_run_group`; an exception it lets out fails every item of the
    group it had not settled, and the thread lives on for the next group.
    """

    thread_name = "inferq-group"

    def __init__(
        self, *, max_group: int, timeout_s: float | None = None, gather_s: float = 0.0
    ) -> None:
        self._max_group = max(1, max_group)
        self._timeout_s = timeout_s
        self._gather_s = gather_s
        self._waiting: list[Pending[T]] = []
        self._cond = threading.Condition()
        self._pid = 0  # the process whose thread runs; gunicorn forks after the app is built
        self._running = False

    def _hand_over(self, item: T, queue_timeout_s: float | None = None) -> Pending[T]:
        """Wait for ``item``'s group to run and return it settled; ``TimeoutError`` when that
        took longer than ``timeout_s`` (None: wait as long as the runner does).

        With ``queue_timeout_s``, an item no group has taken by then is withdrawn, and
        :class:`NotTaken` raised: it never took effect, so the caller can say so for sure.
        """
        pending = Pending(item)
        with self._cond:
            self._start_if_needed()
            self._waiting.append(pending)
            self._cond.notify()
        if queue_timeout_s is not None and not pending.done.wait(queue_timeout_s):
            with self._cond:
                if not pending.taken:
                    self._waiting.remove(pending)
                    raise NotTaken(f"no group took this item within {queue_timeout_s:g} s")
        if not pending.done.wait(self._timeout_s):
            raise TimeoutError(f"the group holding this item took over {self._timeout_s:g} s")
        return pending

    def _run_group(self, group: list[Pending[T]]) -> None:
        raise NotImplementedError

    def _start_if_needed(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._waiting = []  # anything listed belonged to the parent's threads
            self._running = False  # and so did the thread
        if not self._running:
            self._running = True
            threading.Thread(target=self._run, name=self.thread_name, daemon=True).start()

    def _run(self) -> None:
        idle = False
        try:
            while self._run_next():
                pass
            idle = True
        finally:
            if not idle:  # killed (a greenlet's exit): the next hand-over starts another
                with self._cond:
                    self._running = False
            self._thread_ended()

    def _thread_ended(self) -> None:
        """The group thread ends (idle, or killed): let go of what it alone held."""

    def _run_next(self) -> bool:
        """Run the next group; False once idle for IDLE_EXIT_S: the thread then ends, letting
        go of what the runner holds (a pool, a broker connection), and the next hand-over
        starts another."""
        with self._cond:
            if not self._waiting:
                self._cond.wait(IDLE_EXIT_S)
            if not self._waiting:
                self._running = False  # under the lock: a hand-over now starts a thread
                return False
            if not self._gather_s:
                group = self._take_group()
        if self._gather_s:
            time.sleep(self._gather_s)  # the first item waits this long for others to join
            with self._cond:
                group = self._take_group()
            if not group:  # withdrawn while gathering (their queue timeout passed)
                return True
        try:
            self._run_group(group)
        except Exception as exc:  # each waiting request handles it for its own item
            log.debug("a group failed", exc_info=True)
            for pending in group:
                if not pending.settled:
                    pending.error = exc
        finally:
            for pending in group:
                pending.done.set()
        return True

    def _take_group(self) -> list[Pending[T]]:
        """The next group, marked taken (called holding the lock)."""
        group = self._waiting[: self._max_group]
        del self._waiting[: self._max_group]
        for pending in group:
            pending.taken = True
        return group
