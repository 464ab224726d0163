"""Group publishing: one broker message for the jobs an API process accepts together.

Every accepted job needs a predict message. One message per job costs the API a broker round
trip per submit and, worse, costs the worker a message fetch per job: Celery's Redis transport
takes one message per event-loop turn, which capped batches near 14 however deep the queue.

Here each API process has one publisher thread. A request hands over its job id and waits;
the thread takes every id handed over while its previous publish was in flight and sends them
as one message per lane -- group commit, for the broker. There is no timer: at light load a
job goes out alone at once, under load the groups grow by themselves. A request still returns
only after its message is on the broker (or after the publish failed and the job was marked for
the reconciler), so a 202 means what it meant before.
"""

from __future__ import annotations

import logging
import os
import threading
from collections import defaultdict
from collections.abc import Callable

log = logging.getLogger(__name__)

Publish = Callable[[list[str], str], None]


class PublishError(Exception):
    """The group holding a job could not be published (the cause is chained)."""


class _Pending:
    """One job waiting for its group's publish."""

    __slots__ = ("done", "error", "job_id", "lane")

    def __init__(self, job_id: str, lane: str) -> None:
        self.job_id = job_id
        self.lane = lane
        self.done = threading.Event()
        self.error: BaseException | None = None


class GroupPublisher:
    """Publishes job ids handed over by many threads, as few messages as the load allows."""

    def __init__(self, publish: Publish, *, max_group: int, timeout_s: float) -> None:
        self._publish = publish
        self._max_group = max(1, max_group)
        self._timeout_s = timeout_s
        self._waiting: list[_Pending] = []
        self._cond = threading.Condition()
        self._pid = 0  # the process whose thread runs; gunicorn forks after the app is built

    def publish(self, job_id: str, lane: str) -> None:
        """Return once ``job_id``'s message is on the broker; raise what the publish raised,
        or ``TimeoutError`` when it took longer than the publish's own bounded retries."""
        pending = _Pending(job_id, lane)
        with self._cond:
            self._start_if_needed()
            self._waiting.append(pending)
            self._cond.notify()
        if not pending.done.wait(self._timeout_s):
            raise TimeoutError(f"publishing job {job_id} took over {self._timeout_s:g} s")
        if pending.error is not None:
            raise PublishError(f"publishing job {job_id} failed") from pending.error

    def _start_if_needed(self) -> None:
        if self._pid != os.getpid():
            self._pid = os.getpid()
            self._waiting = []  # anything listed belonged to the parent's threads
            threading.Thread(target=self._run, name="inferq-publisher", daemon=True).start()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._waiting:
                    self._cond.wait()
                group = self._waiting[: self._max_group]
                del self._waiting[: self._max_group]
            self._send(group)

    def _send(self, group: list[_Pending]) -> None:
        by_lane: dict[str, list[_Pending]] = defaultdict(list)
        for pending in group:
            by_lane[pending.lane].append(pending)
        for lane, items in by_lane.items():
            try:
                self._publish([p.job_id for p in items], lane)
            except Exception as exc:  # each waiting request handles it for its own job
                for pending in items:
                    pending.error = exc
            for pending in items:
                pending.done.set()
