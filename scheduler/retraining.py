"""When models retrain: beat's schedule, the lock that keeps one beat sending it, and drift.

- ``INFERQ_RETRAIN_SCHEDULE="digits=0 3 * * *;other=every 600s"``: cron (UTC) or a fixed
  interval per model; beat sends ``inferq.train`` to the training lane and the worker opens
  the run.
- Exactly one beat sends scheduled tasks however many scheduler processes run: a Redis lock
  (``SET NX PX``, renewed at a third of its TTL by its holder). A second beat waits for it,
  and takes over within a TTL when the holder dies; a holder that loses it stops its beat.
- Drift: a model whose active version's feedback accuracy over the window falls below
  ``drift_min_accuracy``, or whose mean input value moves by more than ``drift_input_shift``
  from the window before, is retrained early (at most once per window).
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import re
import secrets
import signal
import socket
import threading
from collections.abc import Callable
from typing import Any

import redis
from celery import Celery
from celery.schedules import crontab, schedule
from sqlalchemy.orm import Session, sessionmaker

from db.registry import list_models
from db.training import last_run_at, mean_input, version_accuracy
from inferq.core.broker import publish, route
from inferq.core.errors import ConfigError, Conflict
from inferq.core.messages import TrainRequest
from inferq.core.settings import Settings
from inferq.domain.training import request_run
from scheduler.rollout import apply_pending

log = logging.getLogger(__name__)

_EVERY = re.compile(r"^every\s+(\d+(?:\.\d+)?)\s*s$")


def parse_schedule(text: str) -> dict[str, Any]:
    """``"digits=0 3 * * *;other=every 60s"`` as Celery schedules by model."""
    found: dict[str, Any] = {}
    for item in filter(None, (part.strip() for part in text.split(";"))):
        model, _, spec = (s.strip() for s in item.partition("="))
        every = _EVERY.match(spec)
        fields = spec.split()
        if model and every:
            found[model] = schedule(dt.timedelta(seconds=float(every.group(1))))
        elif model and len(fields) == 5:
            minute, hour, day, month, weekday = fields
            try:
                found[model] = crontab(minute, hour, weekday, day, month)
            except ValueError as exc:
                raise ConfigError(f"INFERQ_RETRAIN_SCHEDULE: {item!r}: {exc}") from exc
        else:
            raise ConfigError(
                f"INFERQ_RETRAIN_SCHEDULE: {item!r} is not model=<cron: 5 fields> or model=every Ns"
            )
    return found


def beat_schedule(settings: Settings) -> dict[str, dict[str, Any]]:
    """Beat's entries: one training task per scheduled model.

    Beat sends them itself, not through ``publish``; the app (``make_celery``) carries the
    same ``RETRY_POLICY``."""
    return {
        f"retrain {model}": {
            "task": TrainRequest.task,
            "schedule": when,
            "args": TrainRequest(model).to_args(),
            "options": route(settings, TrainRequest.lane),
        }
        for model, when in parse_schedule(settings.retraining.retrain_schedule).items()
    }


class BeatLock:
    """The Redis lock only one beat holds at a time."""

    _RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then "
    _RENEW += "return redis.call('pexpire', KEYS[1], ARGV[2]) else return 0 end"
    _RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then "
    _RELEASE += "return redis.call('del', KEYS[1]) else return 0 end"

    def __init__(self, client: redis.Redis, settings: Settings) -> None:
        self.redis = client
        self.key = f"{settings.namespace}:beat-lock"
        self.ttl_ms = int(settings.scheduler.beat_lock_ttl_s * 1000)
        self.identity = f"{socket.gethostname()}/{os.getpid()}/{secrets.token_hex(3)}"

    def acquire(self) -> bool:
        """Take the lock when free."""
        return bool(self.redis.set(self.key, self.identity, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        """Extend the lock; False when it is no longer ours."""
        return bool(self.redis.eval(self._RENEW, 1, self.key, self.identity, self.ttl_ms))

    def release(self) -> None:
        """Give the lock up (only if still ours)."""
        self.redis.eval(self._RELEASE, 1, self.key, self.identity)

    def holder(self) -> str | None:
        """Who holds it now."""
        value = self.redis.get(self.key)
        return value.decode() if isinstance(value, bytes) else value


def _stop_beat() -> None:
    os.kill(os.getpid(), signal.SIGTERM)


def hold_beat_lock(
    lock: BeatLock, stop: threading.Event, on_lost: Callable[[], None] = _stop_beat
) -> bool:
    """Wait until ``lock`` is ours (False when ``stop`` is set first), then keep renewing it
    in a daemon thread; ``on_lost`` runs if another process ends up holding it."""
    interval = lock.ttl_ms / 3000
    waiting_logged = False
    while not _try(lock.acquire):
        if not waiting_logged:
            log.info("another beat holds the beat lock; waiting", extra={"holder": lock.holder()})
            waiting_logged = True
        if stop.wait(interval):
            return False
    log.info("holding the beat lock", extra={"identity": lock.identity})

    def renew() -> None:
        while not stop.wait(interval):
            if _try(lock.renew) is False:
                log.error("lost the beat lock; stopping this beat")
                on_lost()
                return

    threading.Thread(target=renew, name="inferq-beat-lock", daemon=True).start()
    return True


def _try(call: Callable[[], bool]) -> bool | None:
    """A Redis call's answer; None (not False) when Redis is unreachable for a moment."""
    try:
        return call()
    except redis.RedisError:
        log.warning("beat lock: Redis unreachable")
        return None


def drift_reason(session: Session, settings: Settings, model_id: int, active_id: int) -> str | None:
    """Why the model should retrain now, or None."""
    now = dt.datetime.now(dt.UTC)
    window = dt.timedelta(seconds=settings.retraining.drift_window_s)
    if settings.retraining.drift_min_accuracy > 0:
        judged, correct = version_accuracy(session, active_id, now - window)
        if (
            judged >= settings.retraining.drift_min_feedback
            and correct / judged < settings.retraining.drift_min_accuracy
        ):
            return (
                f"feedback accuracy {correct / judged:.3f} over {judged} judged jobs is below "
                f"{settings.retraining.drift_min_accuracy:g}"
            )
    if settings.retraining.drift_input_shift > 0:
        recent_n, recent = mean_input(session, model_id, now - window, now)
        before_n, before = mean_input(session, model_id, now - 2 * window, now - window)
        enough = min(recent_n, before_n) >= settings.retraining.drift_min_feedback
        if enough and recent is not None and before:
            shift = abs(recent - before) / abs(before)
            if shift > settings.retraining.drift_input_shift:
                return f"mean input moved from {before:.3f} to {recent:.3f} ({shift:.1%})"
    return None


def check_drift(sessions: sessionmaker[Session], settings: Settings, app: Celery) -> list[str]:
    """Start a drift-triggered run for each drifting model not trained within the window."""
    if settings.retraining.drift_min_accuracy <= 0 and settings.retraining.drift_input_shift <= 0:
        return []
    started = []
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=settings.retraining.drift_window_s)
    with sessions() as session:
        models = [(m.id, m.name, m.active_version_id) for m in list_models(session)]
    for model_id, name, active_id in models:
        with sessions.begin() as session:
            last = last_run_at(session, model_id)
            if active_id is None or (last is not None and last > cutoff):
                continue
            reason = drift_reason(session, settings, model_id, active_id)
            if reason is None:
                continue
            try:
                run_id = request_run(
                    session, settings, name, trigger="drift", requested_by=f"drift: {reason}"
                )
            except Conflict:
                continue
        publish(app, settings, TrainRequest(name, str(run_id), "drift"))
        log.info("drift: retraining early", extra={"model": name, "reason": reason})
        started.append(name)
    return started


def retrain_forever(
    sessions: sessionmaker[Session], settings: Settings, app: Celery, stop: threading.Event
) -> None:
    """Roll out finished runs and check for drift every ``retrain_check_interval_s``."""
    while not stop.wait(settings.retraining.retrain_check_interval_s):
        try:
            apply_pending(sessions, settings)
        except Exception:
            log.exception("rollout pass failed")
        try:
            check_drift(sessions, settings, app)
        except Exception:
            log.exception("drift check failed")
