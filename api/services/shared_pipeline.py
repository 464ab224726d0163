"""One Redis round trip for the submits an API process holds at once.

Every submit makes one Redis round trip before it reaches Postgres: its rate-limit token and
its result-cache lookup, pipelined (api.services.jobs.accept). Under load an API process
holds dozens of submits at once, and each of those round trips cost it a pool checkout, a
send and a read: about a tenth of the process's CPU at 64 clients.

Here the submits that arrive while a round trip is in flight queue their commands; when it
returns, the first of them sends everyone's as the next pipeline, and each request gets the
replies to its own commands. A lone submit sends its own at once, from its own thread: no
timer, and no hand-over to another thread (as api.services.grouping does for the insert and
the publish), since a hand-over and its wake-up cost about what the round trip does.
Commands are sent in the order they were queued, each request's together, so a token bucket
still sees one take per request, as it did.

The other requests' Redis round trips go the same way: the rate-limit token every other
route takes as its caller authenticates (api.http.ratelimit), and a long-poll's check of its
job's status key (api.services.jobs).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import redis
from redis.client import Pipeline
from redis.exceptions import RedisError

#: Queues a request's commands on the pipeline and returns how many it queued.
Fill = Callable[[Pipeline], int]


class _Turn:
    __slots__ = ("error", "fill", "lead", "ready", "replies")

    def __init__(self, fill: Fill) -> None:
        self.fill = fill
        self.replies: list[Any] = []
        self.error: BaseException | None = None
        self.lead = False
        self.ready = threading.Event()


class SharedPipeline:
    """Runs each request's Redis commands in a pipeline shared with the requests queued
    while the previous one was in flight."""

    def __init__(self, client: redis.Redis) -> None:
        self._client = client
        self._lock = threading.Lock()
        self._queued: list[_Turn] = []
        self._busy = False

    def run(self, fill: Fill) -> list[Any]:
        """The replies to the commands ``fill`` queues, in order: an exception in place of a
        command that failed (``execute(raise_on_error=False)``), and every command's when
        the round trip failed. Raises what ``fill`` raised."""
        turn = _Turn(fill)
        with self._lock:
            self._queued.append(turn)
            lead = not self._busy
            self._busy = True
        if not lead:
            try:
                turn.ready.wait()
            except BaseException:  # killed while waiting: never leave the others leaderless
                self._withdraw(turn)
                raise
            lead = turn.lead
        if lead:
            self._lead()
        if turn.error is not None:
            raise turn.error
        return turn.replies

    def _lead(self) -> None:
        """Send all that is queued (this request's commands first), then hand the lead to
        the first request queued meanwhile, or give it up. No cap on a group: where Redis
        stalls, every request waits for the round trip in flight and the next, never for a
        line of them (a lone command would have waited for a pooled connection as long)."""
        with self._lock:
            group, self._queued = self._queued, []
        try:
            self._send(group)
        finally:
            with self._lock:
                if self._queued:
                    following = self._queued[0]
                    following.lead = True
                    following.ready.set()
                else:
                    self._busy = False

    def _withdraw(self, turn: _Turn) -> None:
        """Take back a turn still queued (its commands never go); where it had been handed
        the lead, hand it on."""
        with self._lock:
            if turn not in self._queued:
                return  # in a group in flight: its replies just go unread
            self._queued.remove(turn)
            if turn.lead:
                if self._queued:
                    self._queued[0].lead = True
                    self._queued[0].ready.set()
                else:
                    self._busy = False

    def _send(self, group: list[_Turn]) -> None:
        pipe = self._client.pipeline(transaction=False)
        counts: list[int] = []
        for turn in group:
            try:
                counts.append(turn.fill(pipe))
            except Exception as exc:  # that request's own mistake: the others still go
                turn.error = exc
                pipe.command_stack[sum(counts) :] = []
                counts.append(0)
        replies: list[Any]
        try:
            replies = pipe.execute(raise_on_error=False) if sum(counts) else []
        except RedisError as exc:
            replies = [exc] * sum(counts)
        except BaseException as exc:
            for turn in group:
                turn.error = turn.error or exc
                turn.ready.set()
            raise
        start = 0
        for turn, count in zip(group, counts, strict=True):
            turn.replies = replies[start : start + count]
            start += count
            turn.ready.set()
