"""The fault suite: the whole system under steady load, one fault at a time.

Every scenario must end with 0 lost jobs and 0 duplicate results, and every accepted job
terminal within a bounded time after the fault ends. Figures are printed as a table and
written to test-artifacts/reliability.md (RELIABILITY.md records a run).
"""

from __future__ import annotations

import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine

from tests.factories import register_fixture_model, running_on
from tests.faults.ledger import HEADER, Outcome, account
from tests.faults.load import Load
from tests.faults.services import Postgres, RabbitMQ, Redis
from tests.faults.system import System
from tests.fixture_models.poison import POISON

pytestmark = pytest.mark.faults

LOAD_MODEL = "slow-digits"  # 50 ms a batch: a worker is usually mid-batch when it dies
RESULTS: list[Outcome] = []
ARTIFACT = Path(__file__).resolve().parents[2] / "test-artifacts" / "reliability.md"


def prepare_models(system: System) -> None:
    settings = system.settings()
    register_fixture_model(
        settings, LOAD_MODEL, "tests.fixture_models.slow:SlowDigits", {"delay_s": 0.05}
    )
    register_fixture_model(
        settings, "poison-digits", "tests.fixture_models.poison:PoisonDigits", {}
    )


@pytest.fixture(scope="module", autouse=True)
def report() -> Iterator[None]:
    yield
    table = "\n".join([HEADER, *(o.row() for o in RESULTS)])
    print("\n" + table)
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(table + "\n")


@pytest.fixture(scope="module")
def redis_world(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[System, Postgres, Redis]]:
    base = tmp_path_factory.mktemp("faults-redis")
    pg, rd = Postgres(base / "postgres"), Redis(base / "redis")
    (base / "home").mkdir()
    try:
        system = System(base / "home", pg.url, rd.url, rd.url, "faults")
        prepare_models(system)
    except BaseException:
        rd.stop()
        pg.stop()
        raise
    yield system, pg, rd
    system.stop()
    rd.stop()
    pg.stop()


@pytest.fixture(scope="module")
def rabbit_world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[System, RabbitMQ]]:
    base = tmp_path_factory.mktemp("faults-amqp")
    rabbit = RabbitMQ()
    pg, rd = Postgres(base / "postgres"), Redis(base / "redis")
    (base / "home").mkdir()
    try:
        system = System(base / "home", pg.url, rabbit.url, rd.url, "faultsamqp")
        prepare_models(system)
    except BaseException:
        rd.stop()
        pg.stop()
        rabbit.remove()
        raise
    yield system, rabbit
    system.stop()
    rd.stop()
    pg.stop()
    rabbit.remove()


def scenario(
    name: str, system: System, fault: Callable[[Load], None], after_s: float = 4.0
) -> Outcome:
    """Load, fault, load again, then count every accepted job."""
    load = Load(system.url, system.key, LOAD_MODEL).start()
    time.sleep(3.0)
    fault(load)
    fault_end = time.time()
    time.sleep(after_s)
    load.stop()
    outcome = account(
        name, system.database_url, load.accepted, fault_end, sum(load.refused.values())
    )
    RESULTS.append(outcome)
    print(
        f"\n{outcome.row()}  refused: {dict(load.refused)}  poll errors: {dict(load.poll_errors)}"
    )
    print(outcome.slowest)
    return outcome


def assert_clean(outcome: Outcome, failures: int = 0) -> None:
    assert outcome.accepted > 0
    assert outcome.lost == 0, outcome
    assert outcome.duplicate_results == 0, outcome
    assert outcome.failed == failures, outcome


def wait_for_running_on(system: System, worker: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if running_on(system.database_url, worker):
            return
        time.sleep(0.02)
    raise TimeoutError(f"{worker} never ran a job")


def kill_mid_batch(system: System, program: str, worker: str, tries: int = 3) -> None:
    """SIGKILL ``program`` while it holds a running batch. On a loaded machine the batch seen
    running may finish before the signal lands; then the kill was not mid-batch, and once
    supervisord has restarted the worker it is tried again (a bounded number of times)."""
    for _ in range(tries):
        pid = system.pid(program)
        wait_for_running_on(system, worker)
        system.kill(program, pid=pid)
        orphaned = running_on(system.database_url, worker)  # a dead worker's batch stays running
        system.wait_running(program)
        if orphaned:
            return
    raise AssertionError(f"{tries} kills of {worker} all landed between batches")


def test_worker_sigkill_mid_batch(redis_world: tuple[System, Postgres, Redis]) -> None:
    system = redis_world[0]

    def fault(load: Load) -> None:
        kill_mid_batch(system, "workers:worker-1", "worker-1")

    outcome = scenario("worker SIGKILL mid-batch (Redis)", system, fault)
    assert_clean(outcome)
    assert outcome.rerun > 0  # the batch it held ran again elsewhere


def terminate_mid_batch(
    system: System, program: str, worker: str, tries: int = 3
) -> dict[str, str]:
    """SIGTERM ``program``'s main process, as supervisord's stop and a scale-down do, while it
    holds a running batch; returns the jobs it held as the signal landed (running on it both
    just before and just after the signal was sent), by id, with the incarnation holding
    them. A batch seen running may finish before the signal lands; then the worker,
    restarted by supervisord, is signalled again, a bounded number of times."""
    engine = create_engine(system.database_url)
    try:
        for attempt in range(tries):
            process = psutil.Process(system.pid(program))
            before = wait_for_running(engine, worker)
            process.send_signal(signal.SIGTERM)
            after = running(engine, worker)
            in_flight = {job: holder for job, holder in before.items() if after.get(job) == holder}
            process.wait(timeout=60)  # a warm shutdown exits once its batch is stored
            system.wait_running(program)
            if in_flight:
                print(f"\nSIGTERM {attempt + 1} landed while {worker} held {len(in_flight)} jobs")
                return in_flight
    finally:
        engine.dispose()
    raise AssertionError(f"{tries} SIGTERMs to {worker} all landed between batches")


def running(engine: Engine, worker: str) -> dict[str, str]:
    """The jobs a worker (by its ``--name``, any incarnation) holds as running now, by id,
    with the incarnation that claimed each."""
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT id::text, worker FROM jobs WHERE status = 'running' AND worker LIKE :w"),
            {"w": f"{worker}@%"},
        )
        return {job: holder for job, holder in rows}


def wait_for_running(engine: Engine, worker: str, timeout: float = 20) -> dict[str, str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = running(engine, worker)
        if found:
            return found
        time.sleep(0.005)
    raise TimeoutError(f"{worker} never ran a job")


def test_worker_sigterm_scale_down(redis_world: tuple[System, Postgres, Redis]) -> None:
    """Catches: a scale-down that is not drain-safe. A worker told to stop (SIGTERM) mid-batch
    must finish and store that batch itself; a cold stop (SIGKILL in place of the SIGTERM, or
    a SIGTERM that drops the running batch) leaves its jobs to be claimed again elsewhere:
    their attempts reach 2 and re-run is no longer 0."""
    system = redis_world[0]
    in_flight: dict[str, str] = {}

    def fault(load: Load) -> None:
        in_flight.update(terminate_mid_batch(system, "workers:worker-2", "worker-2"))

    outcome = scenario("worker SIGTERM mid-batch (scale-down)", system, fault)
    assert_clean(outcome)
    assert outcome.rerun == 0, outcome  # no job was claimed twice
    # and the batch it held when told to stop was finished by that incarnation, once
    engine = create_engine(system.database_url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(
                    "SELECT id::text, status, attempts, worker FROM jobs"
                    " WHERE id = ANY(CAST(:ids AS uuid[]))"
                ),
                {"ids": sorted(in_flight)},
            ).all()
    finally:
        engine.dispose()
    finished = {job: (status, attempts, holder) for job, status, attempts, holder in rows}
    assert finished == {job: ("succeeded", 1, holder) for job, holder in in_flight.items()}


def test_api_node_killed_behind_nginx(redis_world: tuple[System, Postgres, Redis]) -> None:
    system = redis_world[0]

    def fault(load: Load) -> None:
        system.kill("api:api-1")
        system.wait_running("api:api-1")

    assert_clean(scenario("API node SIGKILL behind nginx", system, fault))


def test_redis_restart(redis_world: tuple[System, Postgres, Redis]) -> None:
    system, _, rd = redis_world

    def fault(load: Load) -> None:
        rd.stop()
        time.sleep(1)
        rd.start()

    assert_clean(scenario("Redis restart (broker and status)", system, fault, after_s=8))


def test_broker_down_while_clients_submit(redis_world: tuple[System, Postgres, Redis]) -> None:
    system, _, rd = redis_world

    def fault(load: Load) -> None:
        rd.stop()
        accepted_before = len(load.accepted)
        time.sleep(8)
        assert len(load.accepted) > accepted_before, (
            "submits must still be accepted (Postgres has them)"
        )
        rd.start()

    assert_clean(scenario("Redis broker down 8 s while clients submit", system, fault, after_s=10))


def test_postgres_restart(redis_world: tuple[System, Postgres, Redis]) -> None:
    system, pg, _ = redis_world

    def fault(load: Load) -> None:
        pg.stop()
        time.sleep(2)
        pg.start()

    assert_clean(scenario("Postgres restart", system, fault, after_s=8))


def test_poison_input_fails_alone(redis_world: tuple[System, Postgres, Redis]) -> None:
    system = redis_world[0]
    poison_ids: list[str] = []

    def fault(load: Load) -> None:
        job_id = load.submit_one(POISON, model="poison-digits")
        assert job_id is not None
        poison_ids.append(job_id)
        engine = create_engine(system.database_url)
        deadline = time.monotonic() + 60
        try:
            while time.monotonic() < deadline:
                with engine.connect() as conn:
                    status = conn.scalar(
                        text("SELECT status FROM jobs WHERE id = :i"), {"i": job_id}
                    )
                if status in ("succeeded", "failed"):
                    return
                time.sleep(0.2)
        finally:
            engine.dispose()

    outcome = scenario("poison input (kills its worker)", system, fault)
    assert_clean(outcome, failures=1)
    assert outcome.failure_reasons == {"attempts-exhausted": 1}


def test_worker_sigkill_on_rabbitmq(rabbit_world: tuple[System, RabbitMQ]) -> None:
    system = rabbit_world[0]

    def fault(load: Load) -> None:
        kill_mid_batch(system, "workers:worker-1", "worker-1")

    assert_clean(scenario("worker SIGKILL mid-batch (RabbitMQ)", system, fault))


def test_rabbitmq_restart(rabbit_world: tuple[System, RabbitMQ]) -> None:
    system, rabbit = rabbit_world

    def fault(load: Load) -> None:
        rabbit.stop()
        rabbit.start()

    assert_clean(scenario("RabbitMQ restart", system, fault, after_s=10))


def test_rabbitmq_down_while_clients_submit(rabbit_world: tuple[System, RabbitMQ]) -> None:
    system, rabbit = rabbit_world

    def fault(load: Load) -> None:
        rabbit.stop()
        accepted_before = len(load.accepted)
        time.sleep(8)
        assert len(load.accepted) > accepted_before, (
            "submits must still be accepted (Postgres has them)"
        )
        rabbit.start()

    assert_clean(scenario("RabbitMQ down 8 s while clients submit", system, fault, after_s=10))
