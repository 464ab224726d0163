"""The API's gevent process: redis-py's check before each command goes straight to poll(2),
while its waits stay cooperative (api.server.plain_readiness_checks).

Monkey-patching is for a whole process, so each case runs in a fresh interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from tests.services import Services

ROOT = Path(__file__).resolve().parents[2]

PROBE = textwrap.dedent(
    """
    from gevent import monkey

    monkey.patch_all()

    import json, sys, time
    import gevent, redis
    from api.server import plain_readiness_checks

    installed = plain_readiness_checks() if sys.argv[1] == "on" else False
    client = redis.Redis.from_url(sys.argv[2])
    client.get("inferq-test-green")  # a command, through the pool's check
    connection = client.connection_pool.get_connection()
    switched = []
    gevent.spawn(switched.append, 1)
    ready = connection.can_read()  # the check itself: zero timeout
    check_switched = bool(switched)
    client.connection_pool.release(connection)

    pubsub = client.pubsub()
    pubsub.subscribe("inferq-test-green")
    pubsub.get_message(timeout=1)  # the subscription's confirmation
    ticks = []

    def tick():
        for _ in range(100):
            ticks.append(time.monotonic())
            gevent.sleep(0.01)

    ticker = gevent.spawn(tick)
    started = time.monotonic()
    message = pubsub.get_message(timeout=0.3)  # a wait
    waited = time.monotonic() - started
    ticker.kill()
    print(json.dumps({
        "installed": installed, "ready": ready, "check_switched": check_switched,
        "message": message, "waited": waited, "ticks_during_wait": len(ticks),
    }))
    """
)


def probe(mode: str, redis_url: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", PROBE, mode, redis_url],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        cwd=ROOT,
    )
    assert done.returncode == 0, done.stderr
    found: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return found


def test_the_check_before_a_command_no_longer_goes_through_gevents_hub(
    services: Services,
) -> None:
    # Given a gevent process, as gunicorn's worker makes it, before and after the change
    before = probe("off", services.redis_url)
    after = probe("on", services.redis_url)

    # Then gevent's own poll took the idle connection's check through the hub (another
    # greenlet ran meanwhile), and with the change the check returns without switching,
    # with the same answer
    assert before["check_switched"] is True, before
    assert after["installed"] is True, after
    assert after["check_switched"] is False, after
    assert before["ready"] is False and after["ready"] is False


def test_a_wait_on_redis_still_lets_the_other_greenlets_run(services: Services) -> None:
    # Given the change in a gevent process
    after = probe("on", services.redis_url)

    # When it waits 0.3 s for a message that never comes
    # Then it waited that long, and another greenlet kept running meanwhile (about every
    # 10 ms): the wait did not block the process
    assert after["message"] is None
    assert 0.25 <= after["waited"] < 5, after
    assert after["ticks_during_wait"] >= 10, after
