"""``inferq experiments``: list experiments, show a live report, stop one.

Experiments are started through the API (``POST /v1/experiments``), where requests are
validated; these commands read and end them straight from the database.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import click

from inferq.cli.common import db_session, info, load_settings, reports_errors
from inferq.core.errors import BadRequest, Conflict, NotFound


def _id(raw: str) -> uuid.UUID:
    try:
        return uuid.UUID(raw)
    except ValueError:
        raise BadRequest(f"experiment ids are UUIDs; {raw[:64]!r} is not one") from None


def load_report(session: Any, experiment_id: uuid.UUID) -> dict[str, Any]:
    """The experiment's live report as JSON data, or NotFound."""
    from db.experiments import get_experiment
    from inferq.domain.experiment_report import build_report

    found = get_experiment(session, experiment_id)
    if found is None:
        raise NotFound(f"no experiment {experiment_id}")
    return build_report(session, *found).to_dict()


def describe(report: dict[str, Any]) -> str:
    """A few lines a person reads at a glance (the JSON follows on stdout)."""
    lines = [f"{report['model']} {report['mode']} experiment {report['id']}: {report['status']}"]
    for arm in report["arms"]:
        accuracy = "n/a" if arm["accuracy"] is None else f"{arm['accuracy']:.3f}"
        interval = arm["accuracy_ci"] or ["", ""]
        lines.append(
            f"  arm {arm['name']} v{arm['version']} ({arm['role']}): {arm['jobs']} jobs, "
            f"error rate {arm['error_rate']}, p50 {arm['latency_ms'].get('p50')} ms, "
            f"accuracy {accuracy} [{interval[0]}, {interval[1]}] over {arm['feedback']}"
            + (f", agreement {arm['agreement']['rate']}" if "agreement" in arm else "")
        )
    for c in report["comparisons"]:
        verdict = "significant" if c["significant"] else "not significant"
        lines.append(
            f"  {c['arm']} - {c['baseline']}: {c['difference']:+.3f} "
            f"CI [{c['ci'][0]:+.3f}, {c['ci'][1]:+.3f}], p={c['p_value']} ({verdict}, {c['test']})"
        )
    if report["decision"]:
        lines.append(
            f"  decision: {report['decision']['decision']}: {report['decision']['reason']}"
        )
    return "\n".join(lines)


@click.group()
def experiments() -> None:
    """A/B and shadow experiments."""


@experiments.command(name="list")
@click.option("--model", default=None)
@click.option("--status", type=click.Choice(["running", "concluded", "stopped"]), default=None)
@reports_errors
def list_(model: str | None, status: str | None) -> None:
    """List experiments (newest first) as JSON."""
    from db.experiments import list_experiments
    from inferq.domain.experiment_report import summary

    with db_session(load_settings()) as session:
        rows = list_experiments(session, model=model, status=status)
        click.echo(json.dumps([summary(row, name) for row, name in rows], indent=2))


@experiments.command()
@click.argument("experiment_id")
@reports_errors
def show(experiment_id: str) -> None:
    """The live report of EXPERIMENT_ID: a summary on stderr, the JSON on stdout."""
    with db_session(load_settings()) as session:
        report = load_report(session, _id(experiment_id))
    info(describe(report))
    click.echo(json.dumps(report, indent=2))


@experiments.command()
@click.argument("experiment_id")
@click.option("--reason", default="stopped with inferq experiments stop")
@reports_errors
def stop(experiment_id: str, reason: str) -> None:
    """End a running experiment now; traffic returns to the active version."""
    from db.experiments import finish

    ident = _id(experiment_id)
    with db_session(load_settings()) as session:
        before = load_report(session, ident)
        stopped = finish(
            session,
            ident,
            status="stopped",
            decision="manual",
            reason=reason,
            by="inferq experiments stop",
        )
        if not stopped:
            raise Conflict(f"experiment {ident} is already {before['status']}")
    info(f"stopped experiment {ident}")


COMMANDS = [experiments]
