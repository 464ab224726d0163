"""What ``inferq up`` asks supervisord to run, and its record of a running stack."""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from supervisor.datatypes import RestartUnconditionally
from supervisor.options import ClientOptions, ServerOptions

from inferq.cli.stack_cmds import _say_ready
from inferq.core.errors import ConfigError
from inferq.core.settings import Settings
from inferq.local.embedded import RedisPlan
from inferq.local.stack import (
    StackError,
    StackPaths,
    claim,
    down,
    example_program,
    instance_id,
    programs,
    read_running,
    ready_scope,
    redis_program,
    release,
    running_services,
    write_services,
)
from inferq.local.supervise import stop_timeout, supervisord_conf
from tests.unit.deploy_checks import CONSUMED_LANES, lanes_consumed

LAUNCHER = ("/opt/my python/bin/python", "-m", "inferq")


def parse(paths: StackPaths, text: str) -> ServerOptions:
    """Read ``text`` the way supervisord itself will."""
    paths.logs.mkdir(parents=True, exist_ok=True)
    paths.conf.write_text(text)
    options = ServerOptions()
    options.configfile = str(paths.conf)
    options.process_config(do_usage=False)
    return options


def by_name(options: ServerOptions) -> dict[str, object]:
    return {
        process.name: process
        for group in options.process_group_configs
        for process in group.process_configs
    }


def test_the_stack_runs_workers_beat_and_one_api_node_on_the_public_port() -> None:
    progs = programs(Settings.of(port=9123, workers=3), launcher=LAUNCHER)

    assert [p.name for p in progs] == [
        *("worker-1", "worker-2", "worker-3", "batch-1", "trainer", "webhooks", "beat", "api")
    ]
    api = progs[-1]
    assert api.argv == (*LAUNCHER, "api", "--host", "127.0.0.1", "--port", "9123")
    assert progs[1].argv == (*LAUNCHER, "worker", "--name", "worker-2")
    assert [p.name for p in progs if p.argv[len(LAUNCHER)] == "beat"] == ["beat"]
    # one worker of the batch lane alone by default, so batches never hold up online jobs
    nice, launched = progs[3].argv[:3], progs[3].argv[3:]
    assert launched == (*LAUNCHER, "worker", "--name", "batch-1", "--lanes", "batch")
    # at a lower CPU priority: on a shared host an online job never waits behind a batch
    assert nice[0].endswith("nice") and nice[1:] == ("-n", "10")
    assert [p.name for p in programs(Settings.of(batch_workers=0), LAUNCHER)] == [
        *("worker-1", "trainer", "webhooks", "beat", "api")
    ]


@pytest.mark.parametrize("settings", [Settings(), Settings.of(autoscale="0:2")], ids=str)
def test_every_lane_work_is_published_to_has_a_worker(settings: Settings) -> None:
    consumed = set()
    for program in programs(settings, launcher=LAUNCHER):
        consumed |= lanes_consumed(list(program.argv))
    assert consumed == CONSUMED_LANES


def test_with_autoscale_the_autoscaler_runs_in_place_of_fixed_workers(tmp_path: Path) -> None:
    progs = programs(Settings.of(workers=3, autoscale="0:4"), launcher=LAUNCHER)

    assert [p.name for p in progs] == [
        *("autoscaler", "batch-1", "trainer", "webhooks", "beat", "api")
    ]
    scaler = progs[0]
    assert scaler.argv == (
        *LAUNCHER, "autoscaler", "--backend", "local", "--min-workers", "0", "--max-workers", "4"
    )  # fmt: skip
    # SIGTERM to it alone: it drains its workers before exiting, within the stop timeout
    assert not scaler.stopasgroup and scaler.stopwaitsecs > 30
    processes = by_name(parse(StackPaths(tmp_path), supervisord_conf(StackPaths(tmp_path), progs)))
    assert shlex.split(processes["autoscaler"].command) == list(scaler.argv)


@pytest.mark.parametrize("bad", ["4", "3:1", "a:b", "0:0", "-1:2", "1:2:3"])
def test_a_malformed_autoscale_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="INFERQ_AUTOSCALE"):
        Settings.of(autoscale=bad).validate()


def test_supervisord_reads_back_every_program_as_written(tmp_path: Path) -> None:
    # A home with a space and a percent sign: both need care in supervisord's config language.
    paths = StackPaths(tmp_path / "my 100% home")
    progs = programs(Settings.of(workers=2), launcher=LAUNCHER)

    processes = by_name(parse(paths, supervisord_conf(paths, progs)))

    assert sorted(processes) == [
        *("api", "batch-1", "beat", "trainer", "webhooks", "worker-1", "worker-2")
    ]
    for program in progs:
        process = processes[program.name]
        assert shlex.split(process.command) == list(program.argv)
        assert process.stdout_logfile == str(paths.logs / f"{program.name}.log")
        assert process.redirect_stderr
        assert process.killasgroup
        assert process.stopwaitsecs == program.stopwaitsecs
        assert process.autorestart is not False


def test_workers_stop_warmly_and_together(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path)
    progs = programs(Settings.of(workers=2), launcher=LAUNCHER)

    options = parse(paths, supervisord_conf(paths, progs))

    groups = {group.name: group for group in options.process_group_configs}
    workers = groups["workers"]
    assert [p.name for p in workers.process_configs] == [
        "worker-1",
        "worker-2",
        "batch-1",
        "trainer",
        "webhooks",
    ]
    # Only the Celery parent gets SIGTERM (its warm shutdown lets jobs finish), 30 s to do it.
    assert all(not p.stopasgroup and p.stopwaitsecs == 30 for p in workers.process_configs)
    # supervisord stops the highest priority first: the API stops taking work before workers go.
    assert groups["api"].priority > groups["beat"].priority > workers.priority


def test_supervisorctl_finds_the_control_socket_in_home(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path / "home")
    server = parse(paths, supervisord_conf(paths, programs(Settings(), launcher=LAUNCHER)))

    client = ClientOptions()
    client.configfile = str(paths.conf)
    client.process_config(do_usage=False)

    assert client.serverurl == f"unix://{paths.home / 'supervisor.sock'}"
    # The socket asks for a password (no CRIT from supervisord), which supervisorctl has
    (socket,) = server.configroot.supervisord.server_configs
    assert socket["username"] == client.username == "inferq"
    assert socket["password"] and socket["password"] == client.password


def test_a_home_too_deep_for_a_unix_socket_puts_the_socket_in_tmp(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path / ("deep" * 30))

    assert len(str(paths.socket)) < 100
    assert paths.socket != StackPaths(tmp_path / ("other" * 30)).socket


def test_stop_timeout_adds_up_groups_because_supervisord_stops_them_in_turn() -> None:
    progs = programs(Settings.of(workers=4), launcher=LAUNCHER)

    assert stop_timeout(progs, margin=0) == 10 + 5 + 30


def test_a_second_up_on_the_same_home_is_refused(tmp_path: Path) -> None:
    # Given this process has claimed the home
    paths = StackPaths(tmp_path)
    claim(paths, 8080)
    assert read_running(paths)["url"] == "http://127.0.0.1:8080"

    # When another claim comes, it is refused; once released, the home is free again
    with pytest.raises(StackError, match="already running"):
        claim(paths, 8081)
    release(paths)
    assert not paths.up_json.exists()
    assert read_running(paths) is None


def test_the_record_of_a_dead_up_counts_as_nothing_running(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)  # fmt: skip
    record = {"url": "http://127.0.0.1:1", "pid": int(dead.stdout), "create_time": 0.0}
    paths.up_json.write_text(json.dumps(record))

    assert read_running(paths) is None
    assert down(tmp_path) is None
    assert not paths.up_json.exists()


def test_a_reused_pid_is_not_taken_for_the_up_that_wrote_the_record(tmp_path: Path) -> None:
    paths = StackPaths(tmp_path)
    record = {"url": "http://127.0.0.1:1", "pid": os.getpid(), "create_time": 12.0}
    paths.up_json.write_text(json.dumps(record))

    assert read_running(paths) is None


@pytest.mark.parametrize(
    ("values", "scope"),
    [
        ({"workers": 1}, ""),
        ({"workers": 0}, "?scope=node"),
        ({"autoscale": "1:4"}, ""),
        ({"autoscale": "0:4", "workers": 2}, "?scope=node"),
    ],
)
def test_up_waits_for_an_online_worker_when_one_starts_with_the_stack(
    values: dict, scope: str
) -> None:
    assert ready_scope(Settings.of(**values)) == scope


def test_the_embedded_redis_is_supervised_started_first_and_stopped_last(tmp_path: Path) -> None:
    """Catches: an embedded Redis nothing restarts (a SIGKILL left the stack without one).
    Mutation tried: the stack leaving `redis_program` out of supervisord's programs (the e2e
    and fault tests fail); here, a priority above the workers' fails it."""
    paths = StackPaths(tmp_path)
    progs = [redis_program(RedisPlan(tmp_path / "redis", 6123)), *programs(Settings(), LAUNCHER)]

    options = parse(paths, supervisord_conf(paths, progs))

    by_name = {group.name: group for group in options.process_group_configs}
    redis_group = by_name["redis"]
    (process,) = redis_group.process_configs
    assert "redis-server" in process.command and "--port 6123" in process.command
    assert process.autorestart is RestartUnconditionally
    # supervisord starts low priorities first and stops them last
    assert redis_group.priority < min(g.priority for g in by_name.values() if g.name != "redis")
    assert stop_timeout(progs) >= stop_timeout(progs[1:]) + process.stopwaitsecs


def test_a_home_keeps_its_instance_id(tmp_path: Path) -> None:
    """Mutation tried: `instance_id` making a new id at every call (the claim the stack wrote
    in its own Redis would then name another stack after a restart: this test fails)."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    first = instance_id(StackPaths(tmp_path / "a"))
    assert instance_id(StackPaths(tmp_path / "a")) == first
    assert instance_id(StackPaths(tmp_path / "b")) != first


@pytest.mark.parametrize(
    "values",
    [{}, {"workers": 0}, {"workers": 0, "batch_workers": 0}, {"autoscale": "1:4"}],
    ids=str,
)
def test_the_banner_names_a_program_supervisord_runs(
    values: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Catches: a hint hard-coding `workers:worker-1`, which no stack has under
    `--autoscale` or `--workers 0` (supervisorctl: `ERROR (no such process)`). Mutation
    tried: `example_program` returning "workers:worker-1" again (fails for three of four)."""
    settings = Settings.of(**values)
    paths = StackPaths(tmp_path)
    options = parse(paths, supervisord_conf(paths, programs(settings, launcher=LAUNCHER)))
    # What supervisorctl accepts: group:name, and a lone program's own name
    names = {f"{g.name}:{p.name}" for g in options.process_group_configs for p in g.process_configs}
    names |= {g.name for g in options.process_group_configs if len(g.process_configs) == 1}

    _say_ready("http://127.0.0.1:8080", paths, "90", example_program(settings))

    (hint,) = re.findall(r"then e\.g\. restart (\S+)\)", capsys.readouterr().err)
    assert hint in names


def test_services_json_is_readable_by_its_owner_only(tmp_path: Path) -> None:
    """It may hold passwords in its URLs. Catches: a plain `write_text` (0644 under the usual
    umask, or whatever mode a file left behind had). Mutation tried: `os.open(..., 0o644)`
    (fails: mode 0o644)."""
    paths = StackPaths(tmp_path)
    paths.services_json.write_text("{}")
    paths.services_json.chmod(0o666)  # left behind world-readable
    url = "postgresql+psycopg2://inferq:s3cret@db.example/inferq"
    old = os.umask(0)  # the most permissive umask there is
    try:
        write_services(paths, Settings.of(database_url=url, broker_url="redis://r:6379/0"))
    finally:
        os.umask(old)

    assert stat.S_IMODE(paths.services_json.stat().st_mode) == 0o600
    claim(paths, 8080)  # a live up here: the CLI reads the file back
    assert running_services(tmp_path)["database_url"] == url
    release(paths)
    assert not paths.services_json.exists()
