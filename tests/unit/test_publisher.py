"""The API's group publisher: jobs accepted while a publish is in flight go out as one message."""

from __future__ import annotations

import threading

import pytest

from api.services import grouping
from api.services.publisher import GroupPublisher, PublishError


class Broker:
    """Records each publish; the first one blocks until released, like a slow round trip."""

    def __init__(self, fail: bool = False) -> None:
        self.messages: list[tuple[str, list[str]]] = []
        self.first_started = threading.Event()
        self.release = threading.Event()
        self.fail = fail

    def publish(self, job_ids: list[str], lane: str) -> None:
        if not self.messages:
            self.first_started.set()
            self.release.wait(10)
        self.messages.append((lane, list(job_ids)))
        if self.fail:
            raise ConnectionError("broker unreachable")


def in_threads(
    publisher: GroupPublisher, jobs: list[tuple[str, str]], outcome: dict[str, object]
) -> list[threading.Thread]:
    """Publish each (job id, lane) from its own thread, recording what each call raised."""

    def one(job_id: str, lane: str) -> None:
        try:
            publisher.publish(job_id, lane)
            outcome[job_id] = None
        except Exception as exc:
            outcome[job_id] = exc

    threads = [threading.Thread(target=one, args=job) for job in jobs]
    for thread in threads:
        thread.start()
    return threads


def test_jobs_handed_over_during_a_publish_go_out_together_per_lane() -> None:
    # Given a publish in flight
    broker = Broker()
    publisher = GroupPublisher(broker.publish, max_group=64, timeout_s=10)
    outcome: dict[str, object] = {}
    threads = in_threads(publisher, [("j0", "online")], outcome)
    assert broker.first_started.wait(5)
    # When more jobs are handed over meanwhile, on two lanes
    later = [(f"j{i}", "online") for i in range(1, 8)] + [("b1", "batch"), ("b2", "batch")]
    threads += in_threads(publisher, later, outcome)
    _wait_queued(publisher, len(later))
    broker.release.set()
    for thread in threads:
        thread.join(10)
    # Then they went out as one message per lane, and every caller returned cleanly
    assert broker.messages[0] == ("online", ["j0"])
    grouped = {lane: sorted(ids) for lane, ids in broker.messages[1:]}
    assert grouped == {"online": [f"j{i}" for i in range(1, 8)], "batch": ["b1", "b2"]}
    assert len(broker.messages) == 3
    assert len(outcome) == 10 and set(outcome.values()) == {None}


def test_a_group_never_exceeds_max_group() -> None:
    broker = Broker()
    publisher = GroupPublisher(broker.publish, max_group=3, timeout_s=10)
    outcome: dict[str, object] = {}
    threads = in_threads(publisher, [("j0", "online")], outcome)
    assert broker.first_started.wait(5)
    threads += in_threads(publisher, [(f"j{i}", "online") for i in range(1, 8)], outcome)
    _wait_queued(publisher, 7)
    broker.release.set()
    for thread in threads:
        thread.join(10)
    sizes = [len(ids) for _, ids in broker.messages]
    assert sizes == [1, 3, 3, 1]
    assert sorted(i for _, ids in broker.messages for i in ids) == sorted(f"j{i}" for i in range(8))


def test_a_failed_publish_is_raised_in_every_request_of_its_group() -> None:
    broker = Broker(fail=True)
    broker.release.set()
    publisher = GroupPublisher(broker.publish, max_group=64, timeout_s=10)
    with pytest.raises(PublishError) as raised:
        publisher.publish("j0", "online")
    assert isinstance(raised.value.__cause__, ConnectionError)
    # and the thread lives on for the next job
    broker.fail = False
    publisher.publish("j1", "online")
    assert broker.messages[-1] == ("online", ["j1"])


def test_a_stuck_publish_times_out_the_request_instead_of_hanging_it() -> None:
    broker = Broker()  # the first publish blocks until released
    publisher = GroupPublisher(broker.publish, max_group=64, timeout_s=0.2)
    with pytest.raises(TimeoutError):
        publisher.publish("j0", "online")
    broker.release.set()


def test_an_idle_thread_ends_and_the_next_job_starts_another(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a publisher whose thread ends after 0.5 s with nothing to do
    monkeypatch.setattr(grouping, "IDLE_EXIT_S", 0.5)
    broker = Broker()
    broker.release.set()
    publisher = GroupPublisher(broker.publish, max_group=64, timeout_s=10)
    others = set(threading.enumerate())  # earlier tests' publishers

    def ours() -> list[threading.Thread]:
        return [
            t for t in threading.enumerate() if t.name == "inferq-publisher" and t not in others
        ]

    publisher.publish("j0", "online")
    assert ours()
    # When it has been idle past that
    for _ in range(500):
        if not ours():
            break
        threading.Event().wait(0.01)
    # Then its thread is gone (holding nothing), and the next job is still published
    assert not ours()
    publisher.publish("j1", "online")
    assert broker.messages == [("online", ["j0"]), ("online", ["j1"])]


def _wait_queued(publisher: GroupPublisher, count: int) -> None:
    """Until ``count`` jobs wait behind the publish in flight (bounded)."""
    for _ in range(500):
        with publisher._cond:
            if len(publisher._waiting) >= count:
                return
        threading.Event().wait(0.01)
    raise AssertionError(f"only {len(publisher._waiting)} of {count} jobs were handed over")
