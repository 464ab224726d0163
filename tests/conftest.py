"""Session-wide services: a database per run, a Redis/queue namespace per run, trained digits;
and, in CI, a run that fails when any test was skipped."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from inferq.core.settings import LANES, Settings
from tests.services import (
    CI,
    Services,
    create_database,
    delete_amqp_queues,
    find_services,
    unavailable,
    wipe_redis,
)


class SkipsFailInCI:
    """A skip in CI is a check that did not run while the run looks green: this plugin lists
    every skipped test (and skipped module) with its reason and turns the run into a failure."""

    def __init__(self) -> None:
        self.skipped: list[tuple[str, str]] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.note(report)

    def pytest_collectreport(self, report: pytest.CollectReport) -> None:
        self.note(report)

    def note(self, report: pytest.TestReport | pytest.CollectReport) -> None:
        # An xfail is reported as skipped too, but it ran.
        if report.skipped and not hasattr(report, "wasxfail"):
            where = report.longrepr
            reason = where[2] if isinstance(where, tuple) else str(where)
            self.skipped.append((report.nodeid, reason.removeprefix("Skipped: ")))

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.skipped and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
            session.exitstatus = pytest.ExitCode.TESTS_FAILED

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if not self.skipped:
            return
        terminalreporter.section(
            f"CI: {len(self.skipped)} skipped, and nothing may skip in CI: the run fails", red=True
        )
        for nodeid, reason in self.skipped:
            terminalreporter.line(f"SKIPPED {nodeid}: {reason}", red=True)


def pytest_configure(config: pytest.Config) -> None:
    if CI:
        config.pluginmanager.register(SkipsFailInCI(), "inferq-skips-fail-in-ci")


@pytest.fixture(scope="session")
def services(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Services]:
    found = find_services(tmp_path_factory.mktemp("embedded"))
    yield found
    found.stop()


@pytest.fixture(scope="session")
def database_url(services: Services) -> Iterator[str]:
    from db.migrate import upgrade

    url, drop = create_database(services.postgres_url)
    upgrade(url)
    yield url
    drop()


@pytest.fixture(scope="session")
def namespace(services: Services) -> Iterator[str]:
    name = f"iqt{uuid.uuid4().hex[:8]}"
    yield name
    wipe_redis(services.redis_url, name)


@pytest.fixture(scope="session")
def settings(
    database_url: str, services: Services, namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Settings:
    """Settings of this test run; short timeouts so recovery paths run within a test."""
    return Settings.of(
        env="test",
        home=tmp_path_factory.mktemp("home"),
        database_url=database_url,
        broker_url=services.redis_url,
        redis_url=services.redis_url,
        namespace=namespace,
        log_level="INFO",
        visibility_timeout_s=8,
        heartbeat_interval_s=0.5,
        heartbeat_ttl_s=3.0,
        reconcile_interval_s=1.0,
        stale_queued_s=60.0,
        model_cache_s=0.0,
        # Off by default so tests that reuse holdout inputs exercise workers; the cache has
        # its own tests with it on.
        cache_ttl_s=0,
        auth_cache_s=0.0,
    )


@pytest.fixture(scope="session")
def amqp_settings(settings: Settings, services: Services) -> Iterator[Settings]:
    """The same run on RabbitMQ (its own queue names); skipped locally without a server."""
    if services.amqp_url is None:
        unavailable("RabbitMQ does not answer on 127.0.0.1:5672 (.ci/run starts one)")
    amqp = settings.replace(broker_url=services.amqp_url, namespace=settings.namespace + "amqp")
    yield amqp
    delete_amqp_queues(services.amqp_url, amqp.namespace, LANES)


@pytest.fixture(scope="session")
def digits_version(settings: Settings) -> int:
    """digits trained into this run's database (once per session)."""
    from inferq.cli.models_cmds import train_model

    return train_model(settings, "digits", if_missing=True)


@dataclasses.dataclass(frozen=True)
class Keys:
    """API keys of two tenants, plus a read-only one and an expired and a revoked one."""

    alice: str
    bob: str
    alice_read_only: str
    alice_submit_only: str
    expired: str
    revoked: str


@pytest.fixture(scope="session")
def keys(settings: Settings) -> Keys:
    import datetime as dt

    from db.keys import create_key, ensure_tenant, revoke_key
    from inferq.cli.common import db_session

    with db_session(settings) as session:
        alice, bob = ensure_tenant(session, "alice"), ensure_tenant(session, "bob")
        past = dt.datetime.now(dt.timezone.utc) - dt.timedelta(minutes=1)
        revoked, revoked_row = create_key(session, alice, ["submit", "read"])
        made = Keys(
            alice=create_key(session, alice, ["submit", "read"])[0],
            bob=create_key(session, bob, ["submit", "read"])[0],
            alice_read_only=create_key(session, alice, ["read"])[0],
            alice_submit_only=create_key(session, alice, ["submit"])[0],
            expired=create_key(session, alice, ["submit", "read"], expires_at=past)[0],
            revoked=revoked,
        )
        revoke_key(session, revoked_row.prefix)
    return made


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def operator_key(settings: Settings) -> str:
    """An operator's key (``inferq keys create --operator``): every scope."""
    from db.keys import create_key, ensure_tenant
    from inferq.cli.common import db_session

    with db_session(settings) as session:
        return create_key(
            session, ensure_tenant(session, "ops"), ["submit", "read", "admin", "operator"]
        )[0]
