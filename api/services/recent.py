"""Views of open jobs an API process answered a moment ago, for the long-poll that follows.

A client that submits and then long-polls, or whose long-poll ran out and polls again,
starts its next wait on a job this process has just read or written. Reading it back from
Postgres was most of the cost of starting a long-poll (issue 16). The process keeps the
view it answered with for a few seconds; every long-poll for the same job by the same
tenant in that time starts from a copy of it (the wait sets fields on its own copy), so a
job that many clients wait on is read once per answer kept, not once per client.

A kept view may be behind the job: it is the base of the answer, never the answer itself.
A wait ends either on the job's completion signal, whose fields replace the view's, or
when it runs out, with the grouped read of the job's progress (api.services.jobs.refresh).
What it cannot show is a job that finished between the view being kept and the waiter
being registered, whose signal went before anyone listened: the caller asks Redis for the
job's status key, which every path that finishes a job sets in the round trip that
publishes its signal (inferq.core.status.announce), and reads Postgres when it is there.
"""

from __future__ import annotations

import dataclasses
import threading
import time
import uuid
from collections import OrderedDict

from db.jobs import JobView, copy_job
from db.tables import TERMINAL_STATUSES

#: How long a kept view waits for its long-poll. A client that polls right after its answer
#: comes within milliseconds; one that comes later reads Postgres, as before.
KEEP_S = 5.0

#: Views kept at most per process (the oldest go first): above the long-polls one process
#: holds at once.
MAX_KEPT = 20_000


class RecentViews:
    """Open jobs' views, by (job id, tenant), each kept for ``keep_s`` after it was answered."""

    def __init__(self, keep_s: float = KEEP_S, max_kept: int = MAX_KEPT) -> None:
        self._keep_s = keep_s
        self._max = max_kept
        self._views: OrderedDict[tuple[uuid.UUID, uuid.UUID], tuple[float, JobView]]
        self._views = OrderedDict()
        self._lock = threading.Lock()

    def keep(self, view: JobView) -> None:
        """Keep ``view`` (answered already) for the next long-poll on its job; a finished
        job's is not kept: its answer never changes, and a read of it is rare."""
        job = view.job
        if job.status in TERMINAL_STATUSES:
            return
        key, now = (job.id, job.tenant_id), time.monotonic()
        with self._lock:
            self._views.pop(key, None)
            self._views[key] = (now + self._keep_s, view)
            # Oldest first, so expired ones lead: each holds its job's input, and goes as
            # soon as it cannot be taken, not only once the count is full.
            while self._views and (
                len(self._views) > self._max or next(iter(self._views.values()))[0] < now
            ):
                self._views.popitem(last=False)

    def take(self, job_id: uuid.UUID, tenant_id: uuid.UUID) -> JobView | None:
        """A copy of the view kept for the tenant's job, its own to change; None when there
        is none, or it is older than ``keep_s``."""
        with self._lock:
            found = self._views.get((job_id, tenant_id))
        if found is None or found[0] < time.monotonic():
            return None
        view = found[1]
        return dataclasses.replace(view, job=copy_job(view.job))

    def __len__(self) -> int:
        return len(self._views)
