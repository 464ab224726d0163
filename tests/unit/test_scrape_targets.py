"""``inferq up``'s metrics ports: every worker, the scheduler and the autoscaler get one, the
API nodes serve their own, and all of them are written down for Prometheus, the workers an
autoscaler starts and stops included."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from inferq.core.scrape import set_group
from inferq.core.settings import Settings
from inferq.local.scrape_targets import assign_ports, write_targets
from inferq.local.stack import programs
from scheduler.backends.local import LocalBackend

LAUNCHER = ("/usr/bin/python3", "-m", "inferq")


def test_workers_and_the_scheduler_get_ports_of_their_own(tmp_path: Path) -> None:
    settings = Settings.of(workers=2, batch_workers=1)
    progs, ports = assign_ports(programs(settings, launcher=LAUNCHER), LAUNCHER)
    by_name = {p.name: p for p in progs}

    # The batch worker runs behind `nice -n 10`, and still gets a port of its own
    assert by_name["batch-1"].argv[0].endswith("nice")
    assert {"worker-1", "worker-2", "batch-1", "trainer", "webhooks", "beat"} <= set(ports)
    assert "api" not in ports
    assert len(set(ports.values())) == len(ports)
    for name, port in ports.items():
        assert by_name[name].argv[-2:] == ("--metrics-port", str(port))
    assert "--metrics-port" not in by_name["api"].argv

    targets = tmp_path / "prometheus-targets.json"
    write_targets(targets, [8080], progs, ports, LAUNCHER)
    groups = {g["labels"]["job"]: g["targets"] for g in json.loads(targets.read_text())}
    assert groups["inferq-api"] == ["127.0.0.1:8080"]
    assert groups["inferq-scheduler"] == [f"127.0.0.1:{ports['beat']}"]
    assert f"127.0.0.1:{ports['worker-2']}" in groups["inferq-workers"]
    assert f"127.0.0.1:{ports['batch-1']}" in groups["inferq-workers"]


def test_under_autoscale_the_autoscaler_gets_a_port_and_the_targets_file(tmp_path: Path) -> None:
    """Catches: `inferq up --autoscale` leaving the autoscaler (and so its workers) out of
    the targets file. Mutation tried: "autoscaler" dropped from `JOBS` (fails: no port)."""
    targets = tmp_path / "prometheus-targets.json"
    settings = Settings.of(autoscale="1:4")
    progs, ports = assign_ports(programs(settings, launcher=LAUNCHER), LAUNCHER, targets)
    scaler = {p.name: p for p in progs}["autoscaler"]

    assert scaler.argv[-4:] == (
        *("--metrics-port", str(ports["autoscaler"])), "--metrics-targets", str(targets)
    )  # fmt: skip
    write_targets(targets, [8080], progs, ports, LAUNCHER)
    groups = {g["labels"]["job"]: g["targets"] for g in json.loads(targets.read_text())}
    assert groups["inferq-autoscaler"] == [f"127.0.0.1:{ports['autoscaler']}"]


def test_the_autoscalers_workers_are_listed_while_they_live(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The local backend gives each worker it starts a port of its own and keeps its group
    of the targets file current; the groups `inferq up` wrote stay. Workers here are a
    stand-in process (`sleep`): what is checked is the port each is given and the file.
    Mutation tried: `_reap` not publishing after a worker exits (fails: the stopped
    worker's target stays)."""
    targets = tmp_path / "prometheus-targets.json"
    fixed = [{"targets": ["127.0.0.1:8080"], "labels": {"job": "inferq-api"}}]
    targets.write_text(json.dumps(fixed))
    stand_in = tmp_path / "python"
    stand_in.write_text('#!/bin/sh\necho "$INFERQ_METRICS_PORT" > "$0.$$"\nexec sleep 60\n')
    stand_in.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(stand_in))
    backend = LocalBackend(Settings(), tmp_path / "logs", "auto-online", metrics_targets=targets)
    try:
        # When it starts two workers
        backend.scale(2, frozenset())
        ports = backend.metrics_ports
        assert sorted(ports) == ["auto-online-1", "auto-online-2"]
        assert len(set(ports.values())) == 2 and 0 not in ports.values()
        wait_for(lambda: len(list(tmp_path.glob("python.*"))) == 2)
        given = {int(f.read_text()) for f in tmp_path.glob("python.*")}
        assert given == set(ports.values())  # INFERQ_METRICS_PORT, each its own
        document = json.loads(targets.read_text())
        assert document[0] == fixed[0]
        assert document[1] == {
            "targets": sorted(f"127.0.0.1:{p}" for p in ports.values()),
            "labels": {"job": "inferq-workers", "pool": "auto-online"},
        }

        # When one is stopped, then once it exits its target goes
        backend.scale(1, frozenset())
        assert backend.wait_drained(10)
        (left,) = backend.workers
        assert backend.metrics_ports == {left: ports[left]}
        document = json.loads(targets.read_text())
        assert document[0] == fixed[0]
        assert document[1]["targets"] == [f"127.0.0.1:{ports[left]}"]
    finally:
        backend.close(timeout=10)
    assert json.loads(targets.read_text()) == fixed


def test_set_group_replaces_its_own_group_and_keeps_the_rest(tmp_path: Path) -> None:
    path = tmp_path / "targets.json"
    set_group(path, {"job": "a"}, ["h:2", "h:1"])  # no file yet
    set_group(path, {"job": "b"}, ["h:3"])
    set_group(path, {"job": "a"}, ["h:4"])
    assert json.loads(path.read_text()) == [
        {"targets": ["h:3"], "labels": {"job": "b"}},
        {"targets": ["h:4"], "labels": {"job": "a"}},
    ]
    set_group(path, {"job": "b"}, [])
    assert json.loads(path.read_text()) == [{"targets": ["h:4"], "labels": {"job": "a"}}]
    assert [p.name for p in tmp_path.iterdir()] == ["targets.json"]  # no partial file left


def wait_for(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline
        time.sleep(0.05)
