"""``inferq models``: train, list, promote and roll back models."""

from __future__ import annotations

import json

import click

from inferq.cli.common import db_session, info, load_settings, reports_errors
from inferq.core.settings import Settings


def train_model(
    settings: Settings, name: str, *, if_missing: bool = False, activate: bool = True, seed: int = 0
) -> int:
    """Train ``name`` from its handler's data, store it as a new version; returns its number.

    With ``if_missing``, a model that already has an active version is left alone.
    """
    import torch

    from db.registry import add_version, ensure_model, get_model, serving_info
    from inferq.core.artifacts import pack
    from inferq.core.handlers import handler_class
    from workers.device import configure_threads

    with db_session(settings) as session:
        existing = serving_info(session, name) if if_missing else None
    if existing and existing.active_version is not None:
        return existing.active_version
    cls = handler_class(name)
    # as workers do: on a busy host, more OpenMP threads than free cores spin at every
    # barrier (measured on 2 cores beside one busy process: 7 s with one thread, 15 s to
    # minutes with two)
    configure_threads(settings.worker.torch_threads)
    info(f"training {name} (seed {seed})…")
    trained = cls(torch.device("cpu")).train(seed=seed)
    artifact, sha256 = pack(trained.tensors, trained.metadata)
    with db_session(settings) as session:
        model = get_model(session, name) or None
        model = ensure_model(
            session,
            name,
            handler=name,
            input_schema=cls.input_schema,
            config=dict(cls.default_config) if model is None else model.config,
            label_schema=cls.label_schema,
        )
        version = add_version(
            session,
            model,
            artifact=artifact,
            sha256=sha256,
            metrics=dict(trained.metrics),
            created_by="inferq models train",
            activate=activate,
        )
    metrics = ", ".join(f"{k} {v:g}" for k, v in trained.metrics.items())
    info(
        f"{name} v{version.version} stored "
        f"({len(artifact)} bytes, sha256 {sha256[:12]}…): {metrics}"
    )
    return version.version


@click.group()
def models() -> None:
    """Models and their versions."""


@models.command()
@click.argument("name")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--no-activate", is_flag=True, help="Register as a candidate without serving it.")
@click.option("--if-missing", is_flag=True, help="Do nothing when NAME has an active version.")
@reports_errors
def train(name: str, seed: int, no_activate: bool, if_missing: bool) -> None:
    """Train NAME and store the result as a new version (printed on stdout)."""
    version = train_model(
        load_settings(), name, activate=not no_activate, seed=seed, if_missing=if_missing
    )
    click.echo(version)


@models.command(name="list")
@reports_errors
def list_() -> None:
    """List models with their versions as JSON."""
    from db.registry import list_models, list_versions

    with db_session(load_settings()) as session:
        rows = list_models(session)
        versions = list_versions(session, [m.id for m in rows])
        listing = [
            {
                "name": m.name,
                "active_version": next(
                    (v.version for v in versions if v.id == m.active_version_id), None
                ),
                "versions": [
                    {
                        "version": v.version,
                        "status": v.status,
                        "metrics": v.metrics,
                        "sha256": v.sha256,
                    }
                    for v in versions
                    if v.model_id == m.id
                ],
            }
            for m in rows
        ]
    click.echo(json.dumps(listing, indent=2))


@models.command()
@click.argument("name")
@click.argument("version", type=int)
@click.option("--reason", default=None, help="Why, for the activation history.")
@reports_errors
def promote(name: str, version: int, reason: str | None) -> None:
    """Make VERSION of NAME the active version (refused while an experiment runs on it)."""
    from inferq.domain.promotion import promote as promote_version

    with db_session(load_settings()) as session:
        change = promote_version(session, name, version, by="inferq models promote", reason=reason)
    info(
        f"{name}: v{change.version} is active (was v{change.previous})"
        if change.changed
        else f"{name}: v{change.version} was already active"
    )
    click.echo(json.dumps(change.to_dict()))


@models.command()
@click.argument("name")
@reports_errors
def rollback(name: str) -> None:
    """Make the version active before the current one of NAME active again."""
    from inferq.domain.promotion import rollback as rollback_model

    with db_session(load_settings()) as session:
        change = rollback_model(session, name, by="inferq models rollback")
    info(f"{name}: rolled back from v{change.previous} to v{change.version}")
    click.echo(json.dumps(change.to_dict()))


COMMANDS = [models]
