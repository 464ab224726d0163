"""``inferq up``'s metrics ports: every worker and the scheduler gets one, the API nodes
serve their own, and all of them are written down for Prometheus."""

from __future__ import annotations

import json
from pathlib import Path

from inferq.core.settings import Settings
from inferq.local.scrape_targets import assign_ports, write_targets
from inferq.local.stack import programs

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
