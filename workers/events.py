"""Celery task events for batched tasks: what Flower and ``celery events`` show.

celery-batches buffers messages and runs them as one call, and sends none of the events
Celery's default strategy sends for a task; without them Flower would list every predict
message as sent and never received. These functions send them (when ``INFERQ_TASK_EVENTS`` is
on): ``task-received`` as a message enters the buffer, ``task-started`` and
``task-succeeded`` (or ``task-failed``) around the batch that runs it (the ``TaskEvents``
middleware calls them). A failing send is logged and never fails the batch.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from typing import Any

from celery import signals
from celery_batches import Batches

log = logging.getLogger(__name__)

#: The worker consumer's event dispatcher, taken from the first task_received signal.
_dispatcher: dict[str, Any] = {}


def connect() -> None:
    """Send ``task-received`` for every buffered message of a batching task."""
    signals.task_received.connect(_received, weak=False)


def _received(sender: Any = None, request: Any = None, **_: Any) -> None:
    if request is None or not isinstance(getattr(request, "task", None), Batches):
        return  # Celery's own strategy already sends events for ordinary tasks
    dispatcher = getattr(sender, "event_dispatcher", None)
    if dispatcher is not None:
        _dispatcher.setdefault("it", dispatcher)
    _guarded(
        lambda: request.send_event(
            "task-received",
            name=request.name,
            args=str(request.argsrepr if hasattr(request, "argsrepr") else request.args)[:1024],
            kwargs="{}",
            retries=request.request_dict.get("retries", 0),
            root_id=request.request_dict.get("root_id"),
            parent_id=request.request_dict.get("parent_id"),
        )
    )


def started(requests: Sequence[Any]) -> None:
    """``task-started`` for each message of a batch that starts."""
    _each(_sender(), "task-started", requests)


def succeeded(requests: Sequence[Any], runtime_s: float) -> None:
    """``task-succeeded`` for each message of a batch that ran."""
    _each(_sender(), "task-succeeded", requests, result="None", runtime=runtime_s)


def failed(requests: Sequence[Any], error: BaseException) -> None:
    """``task-failed`` for each message of a batch that raised."""
    _each(_sender(), "task-failed", requests, exception=repr(error)[:1024], traceback="")


def _each(send: Callable[..., Any], kind: str, requests: Sequence[Any], **fields: Any) -> None:
    for request in requests:
        _guarded(lambda: send(kind, uuid=request.id, **fields))  # noqa: B023 (called at once)


def _sender() -> Callable[..., Any]:
    dispatcher = _dispatcher.get("it")
    if dispatcher is None or not getattr(dispatcher, "enabled", False):
        return lambda *args, **kwargs: None
    send: Callable[..., Any] = dispatcher.send
    return send


def _guarded(send: Callable[[], Any]) -> None:
    try:
        send()
    except Exception:
        log.warning("could not send a task event", exc_info=True)
