"""Worker middleware (workers/middleware.py): hooks around every batch, never fatal."""

from __future__ import annotations

import datetime as dt
import logging
import uuid
from types import SimpleNamespace
from typing import Any

import pytest

from db.jobs import ClaimedJob
from inferq.core.settings import Settings
from workers.liveness import Liveness
from workers.middleware import AttemptsCap, Batch, Middleware, after_claim, around


class Recorder(Middleware):
    def __init__(self, calls: list[Any]) -> None:
        self.calls = calls

    def before_batch(self, ctx: Any, batch: Batch) -> None:
        self.calls.append("before")

    def after_batch(self, ctx: Any, batch: Batch, error: BaseException | None) -> None:
        self.calls.append(("after", type(error).__name__ if error else None))


class Broken(Middleware):
    def before_batch(self, ctx: Any, batch: Batch) -> None:
        raise RuntimeError("hook broke")

    def after_claim(self, ctx: Any, batch: Batch) -> None:
        raise RuntimeError("hook broke")

    def after_batch(self, ctx: Any, batch: Batch, error: BaseException | None) -> None:
        raise RuntimeError("hook broke")


def context(*hooks: Middleware, max_attempts: int = 3) -> Any:
    return SimpleNamespace(
        middleware=list(hooks),
        settings=Settings.of(max_attempts=max_attempts),
        liveness=Liveness(),
    )


def claimed(attempts: int) -> ClaimedJob:
    now = dt.datetime.now(dt.timezone.utc)
    return ClaimedJob(uuid.uuid4(), 1, {}, now, now, attempts)


def test_a_failing_hook_is_logged_and_the_batch_still_runs(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Catches: a hook whose exception escapes (it would fail the batch or kill the worker)."""
    calls: list[Any] = []
    ctx = context(Broken(), Recorder(calls))
    with caplog.at_level(logging.ERROR), around(ctx, Batch("predict")) as batch:
        after_claim(ctx, batch)
        calls.append("body")
    assert calls == ["before", "body", ("after", None)]
    assert sum("middleware hook failed" in r.message for r in caplog.records) == 3


def test_after_batch_hooks_see_the_error_and_the_error_still_propagates() -> None:
    calls: list[Any] = []
    with pytest.raises(KeyError), around(context(Recorder(calls)), Batch("predict")):
        raise KeyError("boom")
    assert calls == ["before", ("after", "KeyError")]


def test_after_batch_hooks_run_in_reverse_order() -> None:
    calls: list[Any] = []

    class Named(Recorder):
        def __init__(self, name: str) -> None:
            super().__init__(calls)
            self.name = name

        def after_batch(self, ctx: Any, batch: Batch, error: BaseException | None) -> None:
            calls.append(self.name)

    with around(context(Named("outer"), Named("inner")), Batch("predict")):
        pass
    assert calls[-2:] == ["inner", "outer"]


def test_the_attempts_cap_settles_poison_jobs_before_they_run() -> None:
    ctx = context(AttemptsCap(), max_attempts=3)
    fresh, poison = claimed(attempts=3), claimed(attempts=4)
    batch = Batch("predict", claimed=[fresh, poison])
    after_claim(ctx, batch)
    assert batch.runnable() == [fresh]
    assert batch.settled[poison.id].status == "failed"
    assert batch.settled[poison.id].error == {
        "type": "attempts-exhausted",
        "message": "gave up after 3 attempts; the job kept failing its worker",
    }


def test_a_shadow_batch_is_busy_through_the_middleware_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The shadow task's body no longer marks the worker busy itself (workers/shadow_runs.py):
    the default middleware around the shadow batch does. Catches: the shadow task run
    outside ``around``, or ``Liveness`` left out of the default middleware (tried: the task
    calling ``run_shadows`` without ``with around(...)``)."""
    from inferq.core.broker import make_celery
    from inferq.core.messages import SHADOW_TASK
    from workers.middleware import default_middleware
    from workers.tasks import shadow

    settings = Settings.of(namespace="ns")
    ctx = SimpleNamespace(middleware=default_middleware(), settings=settings, liveness=Liveness())
    busy_while_running: list[int] = []
    monkeypatch.setattr(
        shadow, "run_shadows", lambda ctx, _: busy_while_running.append(ctx.liveness._busy)
    )
    app = make_celery(settings)
    shadow.register(app, settings, lambda: ctx)
    app.tasks[SHADOW_TASK].run([])
    assert busy_while_running == [1]
    assert ctx.liveness._busy == 0
