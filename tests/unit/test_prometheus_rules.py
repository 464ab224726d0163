"""deploy/prometheus, Grafana and Alertmanager: the rules parse, their unit tests pass, and
every metric they read is one the services define (tests/integration/test_metrics.py checks
them against real scrapes)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import pytest
import yaml

from inferq.core.metrics import all_names, sample_names
from tests.prometheus import ROOT, RULES, rule_expressions
from tests.services import CI

PROMETHEUS = ROOT / "deploy" / "prometheus"
DASHBOARD = ROOT / "deploy" / "grafana" / "dashboards" / "inferq.json"
ALERTMANAGER = ROOT / "deploy" / "alertmanager" / "alertmanager.yml"
#: Series Prometheus makes itself, not the services.
BUILTIN = {"up", "scrape_duration_seconds"}
METRIC = re.compile(r"\b(inferq[_:][A-Za-z0-9_:]*|up|scrape_duration_seconds)\b")


def tool(name: str, package: str) -> str:
    found = shutil.which(name)
    if found is None:
        if CI:
            pytest.fail(f"CI: {name} is not installed (.ci/run installs {package})")
        pytest.skip(f"{name} is not installed (apt-get install {package})")
    return found


def run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_promtool_accepts_the_rules() -> None:
    result = run(tool("promtool", "prometheus"), "check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_every_alert_pass() -> None:
    result = run(
        tool("promtool", "prometheus"), "test", "rules", str(PROMETHEUS / "rules_test.yml")
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_a_unit_test() -> None:
    alerts = {
        rule["alert"]
        for group in yaml.safe_load(RULES.read_text())["groups"]
        for rule in group["rules"]
        if "alert" in rule
    }
    tests = yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text())["tests"]
    tested = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])}
    assert alerts - tested == set()


def used_metrics(expressions: list[str]) -> set[str]:
    return {name for expr in expressions for name in METRIC.findall(expr)}


def recorded() -> set[str]:
    document = yaml.safe_load(RULES.read_text())
    return {
        rule["record"]
        for group in document["groups"]
        for rule in group["rules"]
        if "record" in rule
    }


def test_rules_read_only_metrics_the_services_define() -> None:
    unknown = used_metrics(rule_expressions()) - all_names() - recorded() - BUILTIN
    assert unknown == set()


def test_rule_tests_feed_series_the_services_define() -> None:
    tests = yaml.safe_load((PROMETHEUS / "rules_test.yml").read_text())["tests"]
    series = [s["series"] for test in tests for s in test["input_series"]]
    assert used_metrics(series) - all_names() - BUILTIN == set()


def autoscaler_names() -> set[str]:
    """The autoscaler's own metrics (defined beside its loop, on the default registry)."""
    from prometheus_client import REGISTRY

    import scheduler.autoscaler.loop  # noqa: F401  (registers them)

    return {n for n in sample_names(REGISTRY) if n.startswith("inferq_autoscaler_")}


def test_the_grafana_dashboard_reads_only_known_metrics() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    expressions = [t["expr"] for panel in dashboard["panels"] for t in panel.get("targets", [])]
    assert len(expressions) >= 15
    known = all_names() | autoscaler_names() | recorded() | BUILTIN
    assert used_metrics(expressions) - known == set()
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))


def test_prometheus_scrapes_api_workers_and_scheduler_and_loads_the_rules() -> None:
    config = yaml.safe_load((PROMETHEUS / "prometheus.yml").read_text())
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    assert {"inferq-api", "inferq-workers", "inferq-scheduler", "inferq-autoscaler"} <= jobs
    assert config["rule_files"] == ["/etc/prometheus/rules.yml"]


def test_alertmanager_sends_every_alert_to_a_webhook() -> None:
    config = yaml.safe_load(ALERTMANAGER.read_text())
    receivers = {r["name"]: r for r in config["receivers"]}
    assert receivers[config["route"]["receiver"]]["webhook_configs"]
    result = run(tool("amtool", "prometheus-alertmanager"), "check-config", str(ALERTMANAGER))
    assert result.returncode == 0, result.stdout + result.stderr
