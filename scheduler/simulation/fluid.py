"""One tick of a worker pool serving a fluid first-in-first-out queue.

The queue holds cohorts ``[first_arrival, last_arrival, count]``, jobs spread evenly between
the two times. In a tick the pool's ``n`` workers run batches of the smallest size that
clears the work in the tick (what a dynamic batcher settles on: each batch holds what
arrived during the last), or of the largest size when nothing clears it. The backlog goes
first at the pool's rate; the tick's arrivals follow and, once caught up, wait only for the
batch in progress (evenly 0 to one batch's latency).
"""

from __future__ import annotations

import dataclasses
from collections import deque

import numpy as np

from scheduler.simulation.waits import WaitLog

Cohort = list[float]


@dataclasses.dataclass(frozen=True)
class Served:
    """What one tick did."""

    jobs: float
    batches: float
    busy_s: float
    batch_size: int
    batch_s: float


IDLE = Served(0.0, 0.0, 0.0, 0, 0.0)


class Pool:
    """The queue and the batching curve of one pool (its workers counted by the caller)."""

    def __init__(self, throughputs: np.ndarray, latencies: np.ndarray, waits: WaitLog) -> None:
        self.queue: deque[Cohort] = deque()
        self.queued = 0.0
        self.waits = waits
        self._thr = throughputs
        self._lat = latencies
        # The batch size that clears a need is searched on the best rate up to each size.
        self._reach = np.maximum.accumulate(throughputs)

    def tick(self, t: float, dt: float, arrivals: float, n: int) -> Served:
        """Serve for ``dt`` seconds from ``t`` with ``n`` workers; ``arrivals`` come evenly."""
        work = self.queued + arrivals
        if n <= 0 or work <= 0:
            self._enqueue(t, t + dt, arrivals)
            return IDLE
        need = work / (n * dt)
        index = int(np.searchsorted(self._reach, need))
        if index >= len(self._thr):  # nothing clears it: the batch size that goes fastest
            index = int(np.argmax(self._thr))
        per_worker = float(self._thr[index])
        rate = n * per_worker
        at, done = self._drain_backlog(t, rate * dt, rate)
        if arrivals > 0:
            done += self._serve_arrivals(t, dt, arrivals, at, rate, float(self._lat[index]))
        return Served(done, done / (index + 1), done / per_worker, index + 1,
                      float(self._lat[index]))  # fmt: skip

    def close(self, end: float) -> None:
        """Count jobs still queued at ``end`` as having waited until then (at least)."""
        for first, last, count in self.queue:
            self.waits.add(end - first, end - last, count, end)

    def _enqueue(self, first: float, last: float, count: float) -> None:
        if count > 0:
            self.queue.append([first, last, count])
            self.queued += count

    def _drain_backlog(self, t: float, capacity: float, rate: float) -> tuple[float, float]:
        """Serve queued cohorts in order; when the backlog ended, and how many were served."""
        at, done = t, 0.0
        while self.queue and capacity - done > 1e-9:
            first, last, count = self.queue[0]
            take = min(count, capacity - done)
            last_taken = first + (last - first) * take / count
            ends = at + take / rate
            self.waits.add(at - first, ends - last_taken, take, t)
            done, at = done + take, ends
            if take >= count - 1e-9:
                self.queue.popleft()
            else:
                self.queue[0] = [last_taken, last, count - take]
        self.queued = max(0.0, self.queued - done)
        return at, done

    def _serve_arrivals(
        self, t: float, dt: float, count: float, at: float, rate: float, batch_s: float
    ) -> float:
        """Serve this tick's arrivals from ``at`` on; the rest join the queue."""
        end = t + dt
        if self.queue:  # the backlog outlasted the tick
            self._enqueue(t, end, count)
            return 0.0
        arriving = count / dt
        catch_up = (rate * at - arriving * t) / (rate - arriving) if rate > arriving else end
        if catch_up < end:
            early = arriving * (catch_up - t)
            self.waits.add(at - t, 0.0, early, t)
            self.waits.add(0.0, batch_s, count - early, t)
            return count
        taken = min(count, rate * (end - at))
        if taken > 0:
            self.waits.add(at - t, dt - taken / arriving, taken, t)
        self._enqueue(t + taken / arriving, end, count - taken)
        return taken
