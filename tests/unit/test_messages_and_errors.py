from __future__ import annotations

import json
from typing import Any

import kombu.messaging
import pytest
from celery.beat import Scheduler
from celery.exceptions import Retry

from inferq.core.broker import RETRY_POLICY, make_celery, publish, route
from inferq.core.errors import (
    InvalidInput,
    NotFound,
    RateLimited,
    ServerError,
    problem_from_response,
)
from inferq.core.messages import (
    Completion,
    PredictRequest,
    ShadowRequest,
    TaskMessage,
    TrainRequest,
    WebhookRequest,
    chunks,
)
from inferq.core.settings import Settings
from scheduler.retraining import beat_schedule


def test_completion_round_trips_and_tolerates_garbage() -> None:
    done = Completion(("a", "b"))
    assert Completion.decode(done.encode()) == done
    assert Completion.decode(b"{not json") == Completion(())
    assert Completion.decode(b'{"a": 1}') == Completion(())


def test_predict_request_args_are_json_friendly() -> None:
    assert PredictRequest(("x", "y")).to_args() == [["x", "y"]]


def test_chunks() -> None:
    assert chunks(["1", "2", "3"], 2) == [("1", "2"), ("3",)]


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (404, NotFound),
        (422, InvalidInput),
        (429, RateLimited),
        (500, ServerError),
        (418, ServerError),
    ],
)
def test_client_rebuilds_typed_problems(status: int, cls: type) -> None:
    problem = problem_from_response(status, {"detail": "why", "errors": [{"pointer": "/x"}]})
    assert isinstance(problem, cls)
    assert problem.status == status
    assert problem.detail == "why"
    assert problem.to_dict()["status"] == status


@pytest.mark.parametrize(
    ("message", "task", "lane"),
    [
        (PredictRequest(("a", "b"), "batch"), "inferq.predict", "batch"),
        (ShadowRequest(("a",), "e1", (("b", 7),), "online"), "inferq.shadow", "online"),
        (WebhookRequest("j1", True), "inferq.webhook", "webhooks"),
        (TrainRequest("digits", "r1", "manual"), "inferq.train", "training"),
        (TrainRequest("digits"), "inferq.train", "training"),
    ],
)
def test_every_message_goes_through_one_publish_to_its_lane(
    message: TaskMessage, task: str, lane: str
) -> None:
    """Catches: a message sent with another retry policy or to another queue than its lane."""
    sent: list[tuple[str, dict[str, Any]]] = []

    class App:
        def send_task(self, name: str, **options: Any) -> None:
            sent.append((name, options))

    publish(App(), Settings.of(namespace="ns"), message)  # type: ignore[arg-type]
    ((name, options),) = sent
    assert name == task
    assert options["queue"] == f"ns.{lane}" and options["routing_key"] == lane
    assert options["retry"] is True and options["retry_policy"] == RETRY_POLICY
    assert json.loads(json.dumps(options["args"])) == message.to_args()
    if hasattr(type(message), "from_args"):
        assert type(message).from_args(message.to_args()) == message  # type: ignore[attr-defined]


def test_the_celery_app_carries_the_one_retry_policy() -> None:
    """Catches: ``make_celery`` without ``task_publish_retry_policy=RETRY_POLICY`` (or with
    ``task_publish_retry`` off), so what Celery sends itself uses Celery's own default."""
    app = make_celery(Settings.of(namespace="ns"))
    assert app.conf.task_publish_retry is True
    assert app.conf.task_publish_retry_policy == RETRY_POLICY


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, Any]]:
    """The keyword arguments of every message kombu is asked to put on the wire."""
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(
        kombu.messaging.Producer, "publish", lambda _self, _body, **kw: calls.append(kw)
    )
    return calls


def test_beat_and_a_task_retry_publish_with_the_one_retry_policy(
    published: list[dict[str, Any]],
) -> None:
    """The two sends that do not pass through ``publish``: beat's scheduled training and a
    webhook's ``self.retry``. Catches: the same as the test above, seen on the wire."""
    settings = Settings.of(namespace="ns", broker_url="memory://", retrain_schedule="m=every 60s")
    app = make_celery(settings)
    app.conf.beat_schedule = beat_schedule(settings)
    beat = Scheduler(app, lazy=True)
    beat.setup_schedule()
    (entry,) = (e for e in beat.schedule.values() if e.task == TrainRequest.task)
    beat.apply_async(entry)

    @app.task(name="inferq.test-retry", bind=True, max_retries=None)
    def retried(self: Any) -> None:  # pragma: no cover - never run, only retried
        pass

    retried.push_request(id="r", args=[], kwargs={}, retries=0, called_directly=False)
    with pytest.raises(Retry):
        retried.retry(countdown=5, **route(settings, "webhooks"))
    tasks = [call for call in published if call["routing_key"] != "task.sent"]  # events apart
    assert [call["routing_key"] for call in tasks] == ["ns.training", "ns.webhooks"]
    assert all(call["retry"] is True for call in tasks)
    assert all(call["retry_policy"] == RETRY_POLICY for call in tasks)


@pytest.mark.parametrize(
    ("cls", "args"),
    [
        (WebhookRequest, []),
        (WebhookRequest, [7]),
        (TrainRequest, []),
        (TrainRequest, [None, None, "x"]),
        (TrainRequest, ["m", 5]),
        (ShadowRequest, ["a"]),
    ],
)
def test_malformed_message_args_are_refused(cls: Any, args: list[Any]) -> None:
    with pytest.raises(ValueError):
        cls.from_args(args)
