"""inferq through a real PgBouncer in transaction pooling mode (Debian's package, started
here in front of a database of this module's own): the API (gunicorn), a worker and the
scheduler run as processes whose INFERQ_DATABASE_URL is PgBouncer's, while migrations go
straight to Postgres (INFERQ_DIRECT_DATABASE_URL).

Transaction pooling gives a client a server connection for one transaction only, so any
session state (a session-level advisory lock, SET, a server-side prepared statement) lands
on a connection another client gets next. Each test runs one feature end to end through it;
the last one checks that every connection to the database was PgBouncer's and that none was
left holding a session's lock.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests
from sqlalchemy import create_engine, pool, text
from sqlalchemy.orm import Session, sessionmaker

from db.engine import make_session_factory
from db.ids import new_id, time_of
from db.jobs import create_job, queued_job_values
from db.keys import ensure_tenant
from db.partitions import create_partition, floor_time, partitions
from db.registry import serving_info
from inferq.core.settings import Settings
from tests.factories import digits_variants, experiment_model, holdout
from tests.pgbouncer import PgBouncer, find_pgbouncer
from tests.processes import ServiceProcess, free_port, wait_for_http, wait_for_log
from tests.security import Receiver, make_key
from tests.services import Services, create_database, wipe_redis

JSONL = {"Content-Type": "application/x-ndjson"}


@dataclasses.dataclass
class Bounced:
    """The stack on PgBouncer: its settings, the API's address, keys, and the processes."""

    settings: Settings
    bouncer: PgBouncer
    direct_url: str
    api: str
    key: str
    processes: list[ServiceProcess]
    #: PgBouncer's transactions on the database once the migrations had run.
    xacts_after_migrating: int

    def headers(self, extra: dict[str, str] | None = None) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}", **(extra or {})}

    def post(self, path: str, body: Any, **headers: str) -> requests.Response:
        return requests.post(self.api + path, json=body, headers=self.headers(headers), timeout=60)

    def get(self, path: str) -> requests.Response:
        return requests.get(self.api + path, headers=self.headers(), timeout=60)

    def logs(self) -> str:
        """The end of every process's log and PgBouncer's, for failure messages."""
        parts = [f"--- {p.name}\n{p.log()[-2000:]}" for p in self.processes]
        return "\n".join([*parts, f"--- pgbouncer\n{self.bouncer.log()}"])


def xacts(bouncer: PgBouncer) -> int:
    """Transactions PgBouncer has passed to the database so far."""
    return sum(int(row["total_xact_count"]) for row in bouncer.mine("STATS"))


@pytest.fixture(scope="module")
def bounced(
    services: Services, settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Bounced]:
    find_pgbouncer()
    direct_url, drop = create_database(services.postgres_url)
    home = tmp_path_factory.mktemp("pgbouncer")
    bouncer = PgBouncer(direct_url, home / "bouncer", pool=4)
    own = settings.replace(
        home=home / "inferq",
        database_url=bouncer.url,
        direct_database_url=direct_url,
        namespace=f"{settings.namespace}pgb{uuid.uuid4().hex[:4]}",
        worker_lanes="online,batch,webhooks",
        webhook_allowlist="127.0.0.1",
        webhook_backoff_s=0.3,
        webhook_max_attempts=4,
        reconcile_interval_s=0.5,
        # Retention's DDL through PgBouncer too: hour-wide partitions, more of them ahead
        # than the migration makes, a pass every half second.
        job_partition="1h",
        job_retention="6h",
        partitions_ahead=5,
        retention_interval_s=0.5,
    )
    processes: list[ServiceProcess] = []
    try:
        migrated = subprocess.run(
            [sys.executable, "-m", "inferq", "db", "upgrade"],
            env={**os.environ, **own.to_env()},
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert migrated.returncode == 0, migrated.stderr[-3000:]
        after_migrating = xacts(bouncer)
        from inferq.cli.models_cmds import train_model

        train_model(own, "digits")
        logs = home / "logs"
        logs.mkdir()
        port = free_port()
        api = ServiceProcess("api", ["api", "--port", str(port)], own, logs)
        worker = ServiceProcess("worker", ["worker", "--name", "pgb-worker"], own, logs)
        beat = ServiceProcess("beat", ["beat"], own, logs)
        processes += [api, worker, beat]
        wait_for_http(f"http://127.0.0.1:{port}/readyz", api, timeout=90)
        wait_for_log(worker, " ready.", timeout=120)
        key = make_key(own, "alice", ["submit", "read", "admin", "operator"])
        yield Bounced(
            own, bouncer, direct_url, f"http://127.0.0.1:{port}", key, processes, after_migrating
        )
    finally:
        for process in processes:
            process.stop()
        bouncer.stop()
        wipe_redis(services.redis_url, own.namespace)
        drop()


def eventually(read: Callable[[], Any], done: Callable[[Any], bool], timeout_s: float = 60) -> Any:
    """``read()`` until ``done`` says so, or the time is up; the last value read."""
    deadline = time.monotonic() + timeout_s
    value = read()
    while not done(value) and time.monotonic() < deadline:
        time.sleep(0.2)
        value = read()
    return value


def test_migrations_go_straight_to_postgres(bounced: Bounced) -> None:
    """Catches: ``inferq db upgrade`` using the pooled URL (tried: db_cmds.py back to
    ``require_database_url``: PgBouncer counts the migrations' transactions)."""
    assert bounced.xacts_after_migrating == 0
    engine = create_engine(bounced.direct_url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        assert conn.scalar(text("SELECT version_num FROM alembic_version"))
    engine.dispose()


def test_a_job_is_submitted_and_long_polled_through_pgbouncer(bounced: Bounced) -> None:
    # Given two digits
    (first, first_label), (second, second_label) = holdout(2)

    # When one is submitted and long-polled, and the other waited for in the same request
    submitted = bounced.post("/v1/jobs", {"model": "digits", "input": first})
    assert submitted.status_code == 202, submitted.text
    polled = bounced.get(f"/v1/jobs/{submitted.json()['id']}?wait=25")
    waited = bounced.post(
        "/v1/jobs", {"model": "digits", "input": second}, Prefer="wait=25"
    )  # fmt: skip

    # Then both come back answered by the worker
    assert polled.status_code == 200, (polled.text, bounced.logs())
    assert (polled.json()["status"], polled.json()["output"]["label"]) == (
        "succeeded",
        first_label,
    )
    assert waited.status_code == 200, (waited.text, bounced.logs())
    assert waited.json()["output"]["label"] == second_label


def test_an_idempotency_key_replays_its_job_and_feedback_is_stored(bounced: Bounced) -> None:
    body = {"model": "digits", "input": holdout(3)[2][0]}
    key = f"pgb-{uuid.uuid4().hex}"

    # Given a job submitted with an Idempotency-Key
    first = bounced.post("/v1/jobs", body, **{"Idempotency-Key": key})
    assert first.status_code == 202, first.text

    # When the same request comes again, and again with another body
    again = bounced.post("/v1/jobs", body, **{"Idempotency-Key": key})
    other = bounced.post(
        "/v1/jobs", {**body, "input": holdout(4)[3][0]}, **{"Idempotency-Key": key}
    )

    # Then the first job answers, and the other body is refused
    assert again.json()["id"] == first.json()["id"], again.text
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert other.status_code == 422, other.text
    # and once it finished, feedback on it is stored
    job_id = first.json()["id"]
    done = bounced.get(f"/v1/jobs/{job_id}?wait=25").json()
    assert done["status"] == "succeeded", (done, bounced.logs())
    feedback = bounced.post(f"/v1/jobs/{job_id}/feedback", {"label": 3, "correct": False})
    assert feedback.status_code == 201, feedback.text
    assert feedback.json()["label"] == 3


def test_a_batch_runs_through_pgbouncer(bounced: Bounced) -> None:
    # Given five digits as JSON Lines
    pairs = holdout(5)
    body = "".join(json.dumps(item) + "\n" for item, _ in pairs).encode()

    # When they are submitted as a batch
    created = requests.post(
        bounced.api + "/v1/batches?model=digits",
        data=body,
        headers=bounced.headers(JSONL),
        timeout=60,
    )
    assert created.status_code == 202, created.text
    batch_id = created.json()["id"]

    # Then the worker runs it, and the results come back in order
    done = eventually(
        lambda: bounced.get(f"/v1/batches/{batch_id}").json(),
        lambda batch: batch["status"] != "running",
    )
    assert done["status"] == "completed", (done, bounced.logs())
    assert done["counts"]["succeeded"] == 5
    results = bounced.get(f"/v1/batches/{batch_id}/results").text
    assert [json.loads(line)["index"] for line in results.splitlines()] == list(range(5))


def test_a_webhook_is_delivered_through_pgbouncer_after_a_retry(bounced: Bounced) -> None:
    secret = bounced.get("/v1/webhooks/secret").json()["secret"]
    with Receiver(fail_first=1).running() as receiver:
        receiver.secret = secret
        # Given a job with a webhook whose receiver fails its first call
        pixels, label = holdout(6)[5]
        submitted = bounced.post(
            "/v1/jobs", {"model": "digits", "input": pixels, "webhook": receiver.url}
        )
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["id"]

        # Then the worker runs the job and delivers it, again after the failure
        assert receiver.arrived.wait(60), ("the webhook never arrived", bounced.logs())
    assert [call["valid"] for call in receiver.calls] == [True, True]
    assert json.loads(receiver.calls[-1]["body"])["job"]["output"]["label"] == label
    log = eventually(
        lambda: bounced.get(f"/v1/jobs/{job_id}/webhooks").json(),
        lambda body: body["status"] == "delivered",
        timeout_s=10,
    )
    assert [d["status_code"] for d in log["deliveries"]] == [500, 200], log


def test_the_scheduler_sends_a_job_whose_message_was_lost(bounced: Bounced) -> None:
    """The scheduler's periodic work through PgBouncer: its reconciler finds a queued job
    that was never published and publishes it, and the worker runs it."""
    from db.jobs import mark_unpublished
    from inferq.cli.common import db_session

    # Given a queued job whose message never reached the broker
    pixels, label = holdout(7)[6]
    with db_session(bounced.settings) as session:
        digits = serving_info(session, "digits")
        assert digits is not None and digits.active_version_id is not None
        job = create_job(
            session,
            queued_job_values(
                tenant_id=ensure_tenant(session, "alice").id,
                model_id=digits.model_id,
                version_id=digits.active_version_id,
                lane="online",
                input=pixels,
            ),
        )
        mark_unpublished(session, [job.id])

    # Then the scheduler publishes it at its next pass, and the worker answers it
    answered = bounced.get(f"/v1/jobs/{job.id}?wait=25").json()
    assert answered["status"] == "succeeded", (answered, bounced.logs())
    assert answered["output"]["label"] == label


def direct_sessions(bounced: Bounced) -> sessionmaker[Session]:
    """Sessions on Postgres itself, around PgBouncer (for what a test sets up or reads)."""
    return make_session_factory(create_engine(bounced.direct_url, poolclass=pool.NullPool))


def test_the_scheduler_attaches_and_drops_partitions_and_an_expired_job_answers_410(
    bounced: Bounced,
) -> None:
    """Retention's DDL (create, attach, detach, drop, under a transaction-level lock) from
    the scheduler process through PgBouncer. Catches: a retention pass that cannot run in
    transaction pooling (tried: ``lock_retention`` taking a session-level
    ``pg_try_advisory_lock``: the lock stays on a pooled server connection, every later pass
    on another connection finds it taken and does nothing, and the old partition stays)."""
    sessions = direct_sessions(bounced)
    hour = dt.timedelta(hours=1)

    # Given the partitions ahead the scheduler makes beyond the migration's
    def newest() -> dt.datetime:
        with sessions() as session:
            return partitions(session)[-1].upper

    now = dt.datetime.now(dt.timezone.utc)
    made = eventually(newest, lambda upper: upper >= now + 5 * hour, timeout_s=30)
    assert made >= now + 5 * hour, bounced.logs()

    # Given a partition of a day ago holding a finished job of alice's
    lower = floor_time(now - 30 * hour, hour)
    job_id = new_id(lower + hour / 2)
    with sessions.begin() as session:
        create_partition(session, lower, lower + hour, lock_timeout_ms=5000)
        digits = serving_info(session, "digits")
        assert digits is not None
        session.execute(
            text(
                "INSERT INTO jobs (id, created_at, tenant_id, model_id, version_id, lane,"
                " status, input, output) VALUES (:id, :at, :t, :m, :v, 'online', 'succeeded',"
                " '{}', '{}')"
            ),
            {
                "id": job_id,
                "at": time_of(job_id),
                "t": ensure_tenant(session, "alice").id,
                "m": digits.model_id,
                "v": digits.active_version_id,
            },
        )

    # When the scheduler's passes go on
    def oldest() -> dt.datetime:
        with sessions() as session:
            return partitions(session)[0].lower

    # Then it drops that partition, and the job answers 410 Gone on read and cancel
    assert eventually(oldest, lambda first: first > lower, timeout_s=30) > lower, bounced.logs()
    with sessions() as session:
        assert session.scalar(text("SELECT count(*) FROM jobs WHERE id = :j"), {"j": job_id}) == 0
    answer = bounced.get(f"/v1/jobs/{job_id}")
    assert answer.status_code == 410, answer.text
    assert answer.headers["Content-Type"] == "application/problem+json"
    assert bounced.post(f"/v1/jobs/{job_id}/cancel", None).status_code == 410


def test_a_queued_job_is_canceled_through_pgbouncer(bounced: Bounced) -> None:
    from inferq.cli.common import db_session

    # Given a queued job no worker has (its message was never sent)
    with db_session(bounced.settings) as session:
        digits = serving_info(session, "digits")
        assert digits is not None and digits.active_version_id is not None
        job = create_job(
            session,
            queued_job_values(
                tenant_id=ensure_tenant(session, "alice").id,
                model_id=digits.model_id,
                version_id=digits.active_version_id,
                lane="online",
                input=holdout(8)[7][0],
            ),
        )

    # When alice cancels it, and again
    canceled = bounced.post(f"/v1/jobs/{job.id}/cancel", None)
    again = bounced.post(f"/v1/jobs/{job.id}/cancel", None)

    # Then it is canceled, without a worker, and a second cancel changes nothing
    assert canceled.status_code == 200, canceled.text
    assert (canceled.json()["status"], canceled.json()["worker"]) == ("canceled", None)
    assert again.status_code == 200, again.text
    assert again.json()["completed_at"] == canceled.json()["completed_at"]
    assert bounced.get(f"/v1/jobs/{job.id}").json()["status"] == "canceled"


def test_a_shadow_experiment_stores_the_candidates_outputs_through_pgbouncer(
    bounced: Bounced,
) -> None:
    # Given a model with a good active version and a worse candidate in shadow
    variants = digits_variants()
    model = experiment_model(bounced.settings, [variants["good"], variants["bad"]], active=1)
    started = bounced.post(
        "/v1/experiments",
        {
            "model": model,
            "mode": "shadow",
            "arms": [{"version": 1, "name": "live"}, {"version": 2, "name": "candidate"}],
            "policy": {"min_feedback": 50, "alpha": 0.01},
        },
    )
    assert started.status_code == 201, started.text
    experiment = started.json()["id"]

    # When ten jobs are served, and labelled
    pairs = holdout(10)
    ids = []
    for index, (pixels, _) in enumerate(pairs):
        done = bounced.post(
            "/v1/jobs", {"model": model, "input": pixels, "user": f"u{index}"}, Prefer="wait=25"
        )
        assert done.status_code == 200, (done.text, bounced.logs())
        assert (done.json()["version"], done.json()["experiment"]["arm"]) == (1, "live")
        ids.append(done.json()["id"])

    # Then the worker stores the candidate's output for each, and the report pairs them
    def stored() -> int:
        with direct_sessions(bounced)() as session:
            return int(
                session.scalar(
                    text("SELECT count(*) FROM shadow_results WHERE job_id = ANY(:ids)"),
                    {"ids": [uuid.UUID(i) for i in ids]},
                )
                or 0
            )

    assert eventually(stored, lambda n: n == 10) == 10, bounced.logs()
    for job_id, (_, label) in zip(ids, pairs, strict=True):
        sent = bounced.post(f"/v1/jobs/{job_id}/feedback", {"label": label})
        assert sent.status_code == 201, sent.text
    report = bounced.get(f"/v1/experiments/{experiment}").json()
    assert report["arms"][1]["agreement"]["compared"] == 10, report


def _idle_advisory_locks(engine: Any, looks: int = 5) -> int:
    """Advisory locks held by server connections in no transaction: a session's lock left
    behind. A transaction's own lock (a reconciler or retention pass in flight) ends with
    it, but may be seen with its backend still shown idle: within a transaction Postgres
    answers pg_stat_activity from a snapshot taken at its first read, while pg_locks is
    live. So each look is a transaction of its own, and a lock counts only when one is
    there at every look (a session's lock never goes)."""
    found = 0
    for _ in range(looks):
        with engine.connect() as conn:
            found = int(
                conn.scalar(
                    text(
                        "SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a"
                        " ON a.pid = l.pid WHERE l.locktype = 'advisory' AND a.state = 'idle'"
                        " AND l.database ="
                        " (SELECT oid FROM pg_database WHERE datname = current_database())"
                    )
                )
                or 0
            )
        if not found:
            return 0
        time.sleep(0.2)
    return found


def test_every_connection_was_pgbouncers_and_none_kept_a_sessions_lock(
    bounced: Bounced,
) -> None:
    """Runs last. Catches: any process connecting around PgBouncer, and session state left
    on its server connections (tried: the reconciler taking a session-level
    ``pg_try_advisory_lock`` for its pass and ``pg_advisory_unlock`` after it: each
    transaction lands on another server connection, so the unlock misses and the lock stays
    on a pooled connection: 1 advisory lock found)."""
    engine = create_engine(bounced.direct_url, poolclass=pool.NullPool)
    with engine.connect() as conn:
        backends = conn.execute(
            text(
                "SELECT pid, application_name FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid()"
            )
        ).all()
    advisory = _idle_advisory_locks(engine)
    engine.dispose()
    servers = bounced.bouncer.mine("SERVERS")
    clients = bounced.bouncer.mine("CLIENTS")
    pools = bounced.bouncer.mine("POOLS")

    # Every backend on the database is one of PgBouncer's server connections, at most its pool
    assert backends, "nothing is connected to the database"
    assert {pid for pid, _ in backends} <= {server["remote_pid"] for server in servers}, (
        backends,
        servers,
    )
    assert len(servers) <= bounced.bouncer.pool
    assert {p["pool_mode"] for p in pools} == {"transaction"}
    # the API, the worker and the scheduler were its clients
    names = {str(client["application_name"]) for client in clients}
    assert {"inferq-api", "inferq-scheduler"} <= names, names
    assert any(name.startswith("inferq-worker pgb-worker") for name in names), names
    # and every feature above went through it
    done = xacts(bounced.bouncer)
    print(f"pgbouncer: {done} transactions, {len(clients)} clients, {len(servers)} servers")
    assert done > 50
    # No server connection holds a lock that some client's session took and left
    assert advisory == 0
