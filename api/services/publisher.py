"""Group publishing: one broker message for the jobs an API process accepts together.

Every accepted job needs a predict message. One message per job costs the API a broker round
trip per submit and, worse, costs the worker a message fetch per job: Celery's Redis transport
takes one message per event-loop turn, which capped batches near 14 however deep the queue.

Here each API process has one publisher thread. A request hands over its job id and waits;
the thread takes every id handed over while its previous publish was in flight and sends them
as one message per lane -- group commit, for the broker. There is no timer: at light load a
job goes out alone at once, under load the groups grow by themselves. A request still returns
only after its message is on the broker (or after the publish failed and the job was marked for
the reconciler), so a 202 means what it meant before. The grouping itself is
api.services.grouping's, shared with the submit insert.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

from api.services.grouping import GroupThread, Pending

Publish = Callable[[list[str], str], None]


class PublishError(Exception):
    """Raised when the group holding a job could not be published (the cause is chained)."""


class GroupPublisher(GroupThread[tuple[str, str]]):
    """Publishes job ids handed over by many threads, as few messages as the load allows."""

    thread_name = "inferq-publisher"

    def __init__(self, publish: Publish, *, max_group: int, timeout_s: float) -> None:
        super().__init__(max_group=max_group, timeout_s=timeout_s)
        self._publish = publish

    def publish(self, job_id: str, lane: str) -> None:
        """Return once ``job_id``'s message is on the broker; raise what the publish raised,
        or ``TimeoutError`` when it took longer than the publish's own bounded retries."""
        try:
            pending = self._hand_over((job_id, lane))
        except TimeoutError:
            raise TimeoutError(f"publishing job {job_id} took over {self._timeout_s:g} s") from None
        if not pending.settled or pending.error is not None:
            raise PublishError(f"publishing job {job_id} failed") from pending.error

    def _run_group(self, group: list[Pending[tuple[str, str]]]) -> None:
        by_lane: dict[str, list[Pending[tuple[str, str]]]] = defaultdict(list)
        for pending in group:
            by_lane[pending.item[1]].append(pending)
        for lane, items in by_lane.items():
            try:
                self._publish([p.item[0] for p in items], lane)
            except Exception as exc:  # each waiting request handles it for its own job
                for pending in items:
                    pending.error = exc
            else:
                for pending in items:
                    pending.result = None
