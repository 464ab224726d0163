"""A submit's gates in Redis cost one round trip: the caller's rate-limit token and the result
cache's lookup go in one pipeline (issue 15), and none goes where both are off.

The app's Redis client is swapped for one whose connections count what they send: a
pipeline is one send, a lone command one send."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
import redis
from flask import Flask
from flask.testing import FlaskClient

from api.app import create_app
from api.http.ratelimit import TOKEN_BUCKET_SHA
from api.services.shared_pipeline import SharedPipeline
from inferq.core.settings import Settings
from tests.factories import pixels
from tests.integration.test_security_quotas import auth, jobs_of
from tests.security import assert_problem, make_key

#: What a connection sends once as it connects, not per request.
HANDSHAKE = {"HELLO", "CLIENT", "SELECT", "AUTH"}


class CountingConnection(redis.Connection):
    """A connection that counts its round trips (each send of one or more commands), less
    its handshake."""

    sends: list[list[str]] = []

    def send_packed_command(self, command: Any, check_health: bool = True) -> None:
        parts = command if isinstance(command, list) else [command]
        names = command_names(b"".join(bytes(p) for p in parts))
        if names[0] not in HANDSHAKE:
            CountingConnection.sends.append(names)
        super().send_packed_command(command, check_health)


def command_names(packed: bytes) -> list[str]:
    """The name of each command in ``packed`` (RESP: ``*n``, then n ``$len`` strings)."""
    names, at = [], 0
    while at < len(packed):
        end = packed.index(b"\r\n", at)
        count, at = int(packed[at + 1 : end]), end + 2
        for i in range(count):
            end = packed.index(b"\r\n", at)
            length, at = int(packed[at + 1 : end]), end + 2
            if i == 0:
                names.append(packed[at : at + length].decode().upper())
            at += length + 2
    return names


def counted_app(settings: Settings, **changes: Any) -> tuple[Flask, FlaskClient]:
    """An app with the result cache on and its models cached (the suite's settings turn
    both off), counting its Redis round trips."""
    app = create_app(settings.replace(**{"cache_ttl_s": 3600, "model_cache_s": 60.0, **changes}))
    pool = redis.ConnectionPool.from_url(
        settings.effective_redis_url, connection_class=CountingConnection
    )
    use_redis(app, redis.Redis(connection_pool=pool))
    return app, app.test_client()


def use_redis(app: Flask, client: redis.Redis) -> None:
    """The app's Redis client, and the shared pipeline its submits send through, on ``client``."""
    app.extensions["inferq"].redis = client
    app.extensions["inferq"].redis_trips = SharedPipeline(client)


def submit(http: FlaskClient, key: str, model: str = "digits", shade: float = 2.0) -> Any:
    body = {"model": model, "input": pixels(shade)}
    return http.post("/v1/jobs", json=body, headers=auth(key))


@pytest.fixture(autouse=True)
def _fresh_count() -> None:
    CountingConnection.sends = []


def test_a_submit_takes_its_token_and_reads_the_cache_in_one_round_trip(
    settings: Settings, digits_version: int
) -> None:
    # one token back every 10 s: none comes back between the two submits
    _, http = counted_app(settings, key_rate_per_s=0.1, key_rate_burst=100)
    key = make_key(settings, "alice", ["submit", "read"])
    assert submit(http, key).status_code == 202  # the model is now cached in the process
    CountingConnection.sends = []
    response = submit(http, key, shade=3.0)
    assert response.status_code == 202
    assert response.headers["RateLimit-Limit"] == "100"
    assert response.headers["RateLimit-Remaining"] == "98"  # both submits counted
    assert CountingConnection.sends == [["EVALSHA", "GET"]]


def test_a_submit_with_both_off_sends_nothing_to_redis(
    settings: Settings, digits_version: int
) -> None:
    _, http = counted_app(settings, key_rate_per_s=0.0, cache_ttl_s=0)
    key = make_key(settings, "alice", ["submit", "read"])
    assert submit(http, key).status_code == 202
    CountingConnection.sends = []
    assert submit(http, key, shade=3.0).status_code == 202
    assert CountingConnection.sends == []


def test_each_gate_alone_is_one_command(settings: Settings, digits_version: int) -> None:
    key = make_key(settings, "alice", ["submit", "read"])
    for changes, sent in (
        ({"key_rate_per_s": 0.0}, [["GET"]]),
        ({"key_rate_per_s": 0.1, "key_rate_burst": 100, "cache_ttl_s": 0}, [["EVALSHA"]]),
    ):
        _, http = counted_app(settings, **changes)
        assert submit(http, key).status_code == 202
        CountingConnection.sends = []
        assert submit(http, key, shade=3.0).status_code == 202
        assert CountingConnection.sends == sent, changes


def test_a_submit_over_the_rate_gets_429_and_creates_nothing(
    settings: Settings, digits_version: int
) -> None:
    # one token back every 10 s: the requests below fit in that however slow the machine
    _, http = counted_app(settings, key_rate_per_s=0.1, key_rate_burst=2)
    key = make_key(settings, "alice", ["submit", "read"])
    before = jobs_of(settings)
    assert [submit(http, key, shade=s).status_code for s in (1.0, 2.0)] == [202, 202]
    refused = submit(http, key, shade=3.0)
    assert_problem(refused, 429, "rate-limited")
    assert 1 <= int(refused.headers["Retry-After"]) <= 10
    assert refused.headers["RateLimit-Remaining"] == "0"
    assert jobs_of(settings) == before + 2


def test_redis_without_the_script_still_counts_the_submit(
    settings: Settings, digits_version: int
) -> None:
    app, http = counted_app(settings, key_rate_per_s=0.1, key_rate_burst=1)
    key = make_key(settings, "alice", ["submit", "read"])
    client: redis.Redis = app.extensions["inferq"].redis
    client.script_flush()
    assert client.script_exists(TOKEN_BUCKET_SHA) == [False]
    assert submit(http, key).status_code == 202
    assert client.script_exists(TOKEN_BUCKET_SHA) == [True]
    assert_problem(submit(http, key, shade=3.0), 429, "rate-limited")


def test_an_unknown_model_is_counted_before_postgres_is_read(
    settings: Settings, digits_version: int
) -> None:
    _, http = counted_app(settings, key_rate_per_s=0.1, key_rate_burst=1)
    key = make_key(settings, "alice", ["submit", "read"])
    missing = f"nope-{uuid.uuid4().hex[:8]}"
    assert submit(http, key, model=missing).status_code == 422
    assert_problem(submit(http, key, model=missing), 429, "rate-limited")
    assert CountingConnection.sends[0] == ["EVALSHA"]


def test_an_invalid_body_takes_no_token(settings: Settings, digits_version: int) -> None:
    _, http = counted_app(settings, key_rate_per_s=0.1, key_rate_burst=1)
    key = make_key(settings, "alice", ["submit", "read"])
    bad = http.post("/v1/jobs", json={"model": "digits"}, headers=auth(key))
    assert bad.status_code == 422
    assert CountingConnection.sends == []
    assert submit(http, key).status_code == 202


def test_redis_down_lets_the_submit_through_uncounted(
    settings: Settings, digits_version: int
) -> None:
    app = create_app(settings.replace(key_rate_per_s=0.1, key_rate_burst=1))
    use_redis(app, redis.Redis(host="127.0.0.1", port=1, socket_connect_timeout=0.5))
    key = make_key(settings, "alice", ["submit", "read"])
    http = app.test_client()
    assert [submit(http, key, shade=s).status_code for s in (1.0, 2.0)] == [202, 202]


class RecordingPipeline(SharedPipeline):
    """The shared pipeline, recording the commands each request queues on it."""

    def __init__(self, client: redis.Redis) -> None:
        super().__init__(client)
        self.queued: list[list[str]] = []

    def run(self, fill: Any) -> list[Any]:
        def recorded(pipe: Any) -> int:
            count = int(fill(pipe))
            self.queued.append([str(args[0]).upper() for args, _ in pipe.command_stack[-count:]])
            return count

        return super().run(recorded)


def test_a_reads_token_and_a_long_polls_status_check_share_round_trips(
    settings: Settings, digits_version: int
) -> None:
    """Catches: the token taken as a caller authenticates, or a long-poll's check of the job's
    status key, sent on a round trip of its own instead of one shared with the requests in
    flight beside it."""
    app, http = counted_app(settings, key_rate_per_s=0.1, key_rate_burst=100)
    recording = RecordingPipeline(app.extensions["inferq"].redis)
    app.extensions["inferq"].redis_trips = recording
    key = make_key(settings, "alice", ["submit", "read"])
    job_id = submit(http, key).get_json()["id"]  # 202: the view is kept for the long-poll
    recording.queued = []
    response = http.get(f"/v1/jobs/{job_id}?wait=0.1", headers=auth(key))
    assert response.status_code == 200
    assert response.headers["RateLimit-Remaining"] == "98"
    assert recording.queued == [["EVALSHA"], ["EXISTS"]]
