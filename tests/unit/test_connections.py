"""The connection budget: its arithmetic against the settings, the engines it sizes, the
processes ``inferq up`` runs, and the table in docs/connections.md."""

from __future__ import annotations

import collections
import re
from typing import Any

from click.testing import CliRunner
from sqlalchemy import Engine

from inferq.core.connections import Fleet, budget, pool, summary, table, total
from inferq.core.settings import Settings
from inferq.local.stack import Front, connection_budget, programs
from tests.unit.deploy_checks import ROOT

NOWHERE = "postgresql+psycopg2://nobody@127.0.0.1:1/none"
#: docs/connections.md's second table: a fleet past one machine.
LARGE = Fleet(api_nodes=20, workers=500, batch_workers=20, autoscalers=1)


def test_the_default_stack_sums_every_pool_at_its_fullest() -> None:
    # Given the defaults: one API node of api_processes gunicorn processes, each keeping
    # api_db_pool connections and never more, and four workers of 2 (+2 under load)
    settings = Settings()
    api, database = settings.api, settings.database
    api_each = database.api_db_pool
    worker_each = 2 * database.worker_db_pool
    expected = (
        api.api_processes * api_each  # one API node
        + 4 * worker_each  # online, batch, training and webhooks workers
        + 2 * database.scheduler_db_pool  # beat's reconciler and checks
    )

    # Then the budget says so, and the banner carries it
    assert total(budget(settings, Fleet.local(settings))) == expected == 54
    assert connection_budget(settings).startswith("54 at most (API processes 2×18, ")


def test_each_setting_moves_the_sum_by_what_it_says() -> None:
    base = Settings()
    lines = {line.name: line for line in budget(base, LARGE)}
    assert lines["API processes"].processes == 40
    assert total(budget(base, LARGE)) == 40 * 18 + 522 * 4 + 2 + 4 == 2814

    # a smaller API pool, and overflow at half the pool (rounded up) for every pool but the
    # API's, which never overflows
    tight = base.replace(api_db_pool=10, db_overflow=0.5)
    assert pool(tight, "api").most == 10
    assert pool(tight, "worker").most == 3
    assert pool(tight, "scheduler").most == 2
    # no overflow at all: the pools are the budget
    none = base.replace(db_overflow=0.0, worker_db_pool=1)
    assert total(budget(none, LARGE)) == 40 * 18 + 522 * 1 + 1 + 2 == 1245
    # more processes per node multiply the API's share
    assert total(budget(base.replace(api_processes=4), Fleet())) == 4 * 18 + 4 * 4 + 2


def test_every_engine_is_sized_by_the_budget() -> None:
    """Catches: a process sizing its pool itself (tried: api/app.py back to
    ``pool_size=18``: the API's pool ignores INFERQ_API_DB_POOL)."""
    from api.app import create_app
    from scheduler.service import make_reconciler

    settings = Settings.of(
        database_url=NOWHERE,
        broker_url="redis://127.0.0.1:1/0",
        api_db_pool=7,
        scheduler_db_pool=3,
        db_overflow=0.5,
    )

    def sized(engine: Engine) -> tuple[int, int]:
        return engine.pool.size(), engine.pool._max_overflow  # type: ignore[attr-defined]

    api_engine = create_app(settings).extensions["inferq"].sessions.kw["bind"]
    scheduler_engine = make_reconciler(settings).sessions.kw["bind"]
    assert sized(api_engine) == (7, 0)
    assert sized(scheduler_engine) == (3, 2)


def roles_run(settings: Settings) -> collections.Counter[str]:
    """What ``inferq up`` runs, counted as the budget counts it."""
    found: collections.Counter[str] = collections.Counter()
    nodes = tuple(range(9001, 9001 + settings.local.api_nodes))
    for program in programs(settings, ("inferq",), Front(("nginx",), nodes)):
        argv = list(program.argv)
        command = argv[argv.index("inferq") + 1] if "inferq" in argv else "nginx"
        if command == "worker":
            lane = argv[argv.index("--lanes") + 1] if "--lanes" in argv else "online"
            found[f"worker:{lane}"] += 1
        elif command == "autoscaler":
            found["autoscaler"] += 1
            found["worker:online"] += int(argv[argv.index("--max-workers") + 1])
        else:
            found[command] += 1
    return found


def test_the_budget_counts_every_process_inferq_up_runs() -> None:
    """Catches: a process added to the stack but not to the budget (tried: the scheduler
    left out of ``budget``: the counts differ)."""
    for settings in (
        Settings.of(workers=3, batch_workers=2),
        Settings.of(autoscale="1:6", api_nodes=3),
    ):
        run = roles_run(settings)
        lines = {line.name: line.processes for line in budget(settings, Fleet.local(settings))}
        expected: dict[str, Any] = {
            "API processes": run["api"] * settings.api.api_processes,
            "workers (online)": run["worker:online"],
            "workers (batch)": run["worker:batch"],
            "trainers": run["worker:training"],
            "webhook workers": run["worker:webhooks"],
            "scheduler": run["beat"],
        }
        if run["autoscaler"]:
            expected["autoscaler"] = run["autoscaler"]
        assert lines == expected, settings.local


def test_the_docs_carry_the_tables_this_code_computes() -> None:
    docs = (ROOT / "docs" / "connections.md").read_text()
    assert table(budget(Settings(), Fleet())) in docs
    assert table(budget(Settings(), LARGE)) in docs
    assert summary(budget(Settings(), Fleet())).split(" (")[0] in docs


def test_the_cli_prints_the_budget_of_any_fleet() -> None:
    from inferq.cli import main

    result = CliRunner().invoke(
        main,
        ["db", "connections", "--api-nodes", "20", "--workers", "500", "--batch-workers", "20",
         "--autoscalers", "1"],
        env={"INFERQ_DATABASE_URL": NOWHERE, "INFERQ_BROKER_URL": "redis://127.0.0.1:1/0"},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.strip() == table(budget(Settings(), LARGE))


def test_up_prints_the_budget_of_the_stack_it_runs_in_its_banner(
    monkeypatch: Any, tmp_path: Any
) -> None:
    """Catches: a banner without the budget, or with the default stack's whatever the flags
    (tried: the ``Postgres:`` line dropped from stack_cmds._say_ready; ``up`` summing
    ``Settings()`` instead of the settings its flags made: 90 printed for --workers 5)."""
    from inferq.cli import main
    from inferq.local import stack

    # Given an `up` whose stack is ready at once (nothing started)
    monkeypatch.setattr(stack, "run", lambda settings, on_ready: on_ready() or 0)
    env = {"INFERQ_HOME": str(tmp_path), "INFERQ_DATABASE_URL": NOWHERE}

    # When it runs with the default fleet, and with four more online workers
    plain = CliRunner().invoke(main, ["up"], env=env)
    more = CliRunner().invoke(main, ["up", "--workers", "5"], env=env)

    # Then each banner carries its own stack's budget: four workers of 2 (+2) more
    assert plain.exit_code == 0 and more.exit_code == 0, (plain.output, more.output)
    assert "inferq is up at" in plain.output
    assert "  Postgres: 54 at most (API processes 2×18, " in plain.output
    assert "  Postgres: 70 at most (" in more.output


def test_the_readmes_fleet_figure_is_what_its_command_prints() -> None:
    """Catches: a README figure for other flags than the ones it shows (it said 3,534 for
    ``--api-nodes 20 --workers 500``, which prints 3454)."""
    from inferq.cli import main

    readme = " ".join((ROOT / "README.md").read_text().split())
    found = re.search(
        r"`inferq db connections ([^`]+)` prints it for any fleet \(([\d,]+) there\)", readme
    )
    assert found, "README no longer quotes the fleet's budget"
    flags, figure = found.group(1).split(), int(found.group(2).replace(",", ""))
    result = CliRunner().invoke(
        main, ["db", "connections", *flags], env={"INFERQ_DATABASE_URL": NOWHERE}
    )
    assert result.exit_code == 0, result.output
    assert result.output.strip().splitlines()[-1] == f"| **total** | | | | | **{figure}** |"
