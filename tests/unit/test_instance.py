"""A stack's claim on its Redis: written by the owner, refused by any other stack, naming both."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from inferq.core.errors import ForeignRedis
from inferq.core.instance import Claim, check_at_start, check_claim, claim_key
from inferq.core.settings import Settings
from inferq.local.embedded import free_port, start_redis


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    service = start_redis(tmp_path / "redis")
    yield service.url
    service.stop()


def stack(url: str, instance: str, home: str, *, claims: bool = False, **more: str) -> Settings:
    return Settings.of(
        broker_url=url, instance=instance, home=Path(home), claim_redis=claims, **more
    )


def test_a_redis_claimed_by_one_stack_is_refused_by_another_naming_both(server: str) -> None:
    """Catches: two stacks silently sharing one Redis (issue 16). Mutation tried: the
    comparison in `check_claim` left out (it returns whatever the claim says): this test
    fails with DID NOT RAISE."""
    # Given stack A, which runs this Redis, has claimed it
    a = stack(server, "aaaa", "/homes/a", claims=True)
    check_claim(redis.Redis.from_url(server), a, server)
    assert Claim.decode(redis.Redis.from_url(server).get(claim_key(a))) == Claim("aaaa", "/homes/a")

    # When stack B's process is pointed at it
    b = stack(server, "bbbb", "/homes/b")
    with pytest.raises(ForeignRedis) as refused:
        check_claim(redis.Redis.from_url(server), b, server)

    # Then it is refused, with both stacks named
    message = str(refused.value)
    for part in ("aaaa", "/homes/a", "bbbb", "/homes/b", server):
        assert part in message
    # and A itself goes on using it
    check_claim(redis.Redis.from_url(server), a, server)


def test_an_unclaimed_redis_is_shared_and_claimed_only_by_its_owner(server: str) -> None:
    """A configured Redis shared on purpose by stacks that do not run it stays unclaimed."""
    client = redis.Redis.from_url(server)
    for instance in ("one", "two"):
        check_claim(client, stack(server, instance, f"/homes/{instance}"), server)
    assert client.get(claim_key(Settings())) is None
    # and another namespace on the same Redis is another deployment: no conflict
    check_claim(client, stack(server, "a", "/a", claims=True), server)
    check_claim(client, stack(server, "b", "/b", claims=True, namespace="other"), server)


def test_the_owner_claims_its_redis_again_after_it_lost_its_data(server: str) -> None:
    """Mutation tried: `check_claim` without its SET NX (the owner never writes the claim
    again): the second stack is then let in and this test fails."""
    client = redis.Redis.from_url(server)
    owner = stack(server, "aaaa", "/homes/a", claims=True)
    check_claim(client, owner, server)
    client.flushdb()  # restarted without its data

    check_claim(client, owner, server)

    with pytest.raises(ForeignRedis):
        check_claim(client, stack(server, "bbbb", "/homes/b"), server)


def test_a_process_of_another_stack_exits_at_start_naming_both(server: str) -> None:
    """What a stack's processes do at start (`inferq beat` here; api, worker and autoscaler
    call the same check). Mutation tried: the `check_at_start` call removed from
    `inferq beat`: it starts and keeps trying its missing database, never naming the stacks,
    and this test fails (on its timeout)."""
    check_claim(
        redis.Redis.from_url(server), stack(server, "aaaa", "/homes/a", claims=True), server
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("INFERQ_")}
    env.update(
        INFERQ_BROKER_URL=server, INFERQ_INSTANCE="bbbb", INFERQ_HOME="/homes/b",
        INFERQ_DATABASE_URL="postgresql+psycopg2://nobody@127.0.0.1:1/none",
    )  # fmt: skip

    done = subprocess.run(
        [sys.executable, "-m", "inferq", "beat"],
        env=env, capture_output=True, text=True, timeout=60,
    )  # fmt: skip

    assert done.returncode == 1
    assert "belongs to another inferq stack: aaaa (home /homes/a)" in done.stderr
    assert "not this one: bbbb (home /homes/b)" in done.stderr


def test_a_redis_that_does_not_answer_is_not_waited_for_forever() -> None:
    url = f"redis://127.0.0.1:{free_port()}/0"
    check_at_start(stack(url, "aaaa", "/homes/a"), wait_s=0.3)


def test_the_password_of_a_redis_url_stays_out_of_the_message(server: str) -> None:
    client = redis.Redis.from_url(server)
    check_claim(client, stack(server, "aaaa", "/homes/a", claims=True), server)
    secret = server.replace("redis://", "redis://user:s3cret@")
    with pytest.raises(ForeignRedis) as refused:
        check_claim(client, stack(server, "bbbb", "/homes/b"), secret)
    assert "s3cret" not in str(refused.value)
