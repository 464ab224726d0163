"""Long-poll support: one Redis subscription per API process wakes every waiting request.

Workers publish the ids of each finished batch on one channel. A daemon thread per process
listens and sets the events of requests waiting for those ids; a waiting request holds no
database connection and reads the job again only when woken (or when its wait runs out).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import redis

from inferq.core.messages import Completion

log = logging.getLogger(__name__)


class Signal(threading.Event):
    """An event that also carries the finished job's fields when the worker sent them."""

    def __init__(self) -> None:
        super().__init__()
        self.payload: Mapping[str, Any] | None = None


class CompletionWaiter:
    """Maps job ids to the events of requests waiting for them."""

    def __init__(self, client_factory: Callable[[], redis.Redis], channel: str) -> None:
        self._client_factory = client_factory
        self._channel = channel
        self._events: dict[str, set[Signal]] = {}
        self._lock = threading.Lock()
        self._pid: int | None = None
        self._subscribed = threading.Event()

    @contextmanager
    def expect(self, job_id: str) -> Iterator[Signal]:
        """Register interest in ``job_id`` before reading its state, so no signal is missed."""
        self._ensure_listening()
        event = Signal()
        with self._lock:
            self._events.setdefault(job_id, set()).add(event)
        try:
            yield event
        finally:
            with self._lock:
                waiting = self._events.get(job_id)
                if waiting is not None:
                    waiting.discard(event)
                    if not waiting:
                        del self._events[job_id]

    def waiting(self, job_id: str) -> int:
        """How many requests of this process wait for ``job_id`` now."""
        with self._lock:
            return len(self._events.get(job_id, ()))

    def notify(self, done: Completion) -> None:
        """Wake the requests waiting for the jobs of ``done``, handing them the jobs' fields."""
        with self._lock:
            woken = [(job_id, e) for job_id in done.job_ids for e in self._events.get(job_id, ())]
        for job_id, event in woken:
            event.payload = done.jobs.get(job_id)
            event.set()

    def _wake_all(self) -> None:
        with self._lock:
            events = [e for waiting in self._events.values() for e in waiting]
        for event in events:
            event.set()

    def _ensure_listening(self) -> None:
        # Threads do not survive fork: each gunicorn worker process starts its own.
        if self._pid == os.getpid():
            return
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self._subscribed.clear()
            threading.Thread(target=self._listen, name="inferq-completions", daemon=True).start()
        # Wait (briefly) for the subscription so the first waiter cannot miss its signal.
        self._subscribed.wait(timeout=2.0)

    def _listen(self) -> None:
        stop = threading.Event()
        while not stop.wait(0):
            try:
                self._listen_once()
            except redis.RedisError:
                log.warning("completion subscription lost; resubscribing", exc_info=True)
            self._subscribed.clear()
            # Signals may have been missed while disconnected: let every waiter re-check.
            self._wake_all()
            stop.wait(0.5)

    def _listen_once(self) -> None:
        pubsub = self._client_factory().pubsub(ignore_subscribe_messages=True)
        try:
            pubsub.subscribe(self._channel)
            pubsub.get_message(timeout=1.0)  # the subscribe confirmation
            self._subscribed.set()
            # Reads that wait for the next message (cooperatively under gevent): a read with
            # a timeout costs a readiness poll per message, a third of this thread's CPU. A
            # Redis that goes away ends the read with an error: subscribe again.
            for message in pubsub.listen():
                if message["type"] == "message":  # listen() yields no None
                    self.notify(Completion.decode(message["data"]))
        finally:
            pubsub.close()
