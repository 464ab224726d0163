"""``inferq models``: train, list, promote and roll back models."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from inferq.cli.common import db_session, info, load_settings, reports_errors
from inferq.core.errors import ConfigError
from inferq.core.settings import Settings


def train_model(
    settings: Settings, name: str, *, if_missing: bool = False, activate: bool = True, seed: int = 0
) -> int:
    """Train ``name`` from its handler's data, store it as a new version; returns its number.

    With ``if_missing``, a model that already has an active version is left alone.
    """
    import torch

    from db.registry import serving_info
    from inferq.core.artifacts import open_store
    from inferq.core.handlers import handler_class
    from inferq.domain.registration import register
    from inferq.domain.weights import describe, store_tensors
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
    artifact = store_tensors(open_store(settings), trained.tensors, trained.metadata)
    with db_session(settings) as session:
        version = register(
            session,
            name,
            describe(name),
            artifact,
            metrics=dict(trained.metrics),
            created_by="inferq models train",
            activate=activate,
        )
        number = version.version
    metrics = ", ".join(f"{k} {v:g}" for k, v in trained.metrics.items())
    stored = f"{artifact.size} bytes, sha256 {artifact.sha256[:12]}…"
    info(f"{name} v{number} stored ({stored}): {metrics}")
    return number


def add_model(
    settings: Settings,
    name: str,
    handler: str,
    weights: str | None,
    *,
    config: dict[str, Any],
    activate: bool,
    load_check: bool = True,
    expected_sha256: str | None = None,
) -> int:
    """Register ``weights`` (a local file or directory, or a URI the store holds) as the next
    version of ``name`` served by ``handler``; returns the version number. Nothing is written
    to Postgres unless the weights fit the handler."""
    from db.registry import get_model
    from inferq.core.artifacts import open_store
    from inferq.core.handlers import handler_class
    from inferq.domain.registration import NAME_PATTERN, check_weights, expect_digest, register
    from inferq.domain.weights import describe

    if not re.match(NAME_PATTERN, name):
        raise ConfigError(f"model names are lowercase letters, digits, - and _ ({name!r})")
    with db_session(settings) as session:
        model = get_model(session, name)
        if model is not None and model.handler != handler:
            raise ConfigError(f"model {name!r} is served by {model.handler!r}, not {handler!r}")
    description = describe(handler, config)
    source = weights or _bundled(handler_class(handler))
    store = open_store(settings)
    artifact = store.ingest_uri(source) if "://" in source else store.ingest_path(_local(source))
    expect_digest(artifact, expected_sha256)
    check_weights(store, artifact, description.tensor_spec)
    if load_check:
        _load_check(settings, handler, {**description.default_config, **config}, artifact)
    with db_session(settings) as session:
        version = register(
            session,
            name,
            description,
            artifact,
            config=config,
            created_by="inferq models add",
            activate=activate,
        )
        number = version.version
    state = "active" if activate else "a candidate"
    stored = f"{artifact.size} bytes, sha256 {artifact.sha256[:12]}…"
    info(f"{name} v{number} is {state}: {stored}, {artifact.uri}")
    return number


def _bundled(cls: Any) -> str:
    bundled = cls.bundled_artifact()
    if bundled is None:
        raise ConfigError(f"{cls.__name__} ships no weights: give --weights")
    return str(bundled)


def _local(source: str) -> Path:
    path = Path(source).expanduser()
    if not path.exists():
        raise ConfigError(f"--weights {source}: no such file or directory")
    return path


def _load_check(settings: Settings, handler: str, config: dict[str, Any], artifact: Any) -> None:
    """Load the weights as a worker would (on the CPU, from a scratch cache) before any row
    is written: weights that fit the names and shapes but not the handler fail here."""
    import tempfile

    import torch

    from inferq.core.artifacts import open_store
    from inferq.core.errors import ArtifactError
    from inferq.core.handlers import handler_class
    from workers.artifact_cache import ArtifactCache

    with tempfile.TemporaryDirectory(prefix="inferq-check-") as scratch:
        cache = ArtifactCache(open_store(settings), Path(scratch), artifact.size * 2 + 1)
        path, _ = cache.fetch(artifact)
        try:
            handler_class(handler)(torch.device("cpu"), config).load_artifact(path)
        except Exception as exc:
            raise ArtifactError(f"the weights do not load: {type(exc).__name__}: {exc}") from exc


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


@models.command()
@click.argument("name")
@click.option("--handler", required=True, help="An inferq.models entry point or module:Class.")
@click.option(
    "--weights",
    default=None,
    help="A .safetensors file, a directory (config, shards, tokenizer…), or a URI the "
    "artifact store holds; default: the weights the handler ships.",
)
@click.option("--config", "config_json", default="{}", help="The model's config as JSON.")
@click.option("--activate", is_flag=True, help="Serve this version at once.")
@click.option("--no-load-check", is_flag=True, help="Skip loading the weights before registering.")
@click.option("--sha256", default=None, help="The digest the weights must have.")
@reports_errors
def add(name: str, handler: str, weights: str | None, config_json: str, activate: bool,
        no_load_check: bool, sha256: str | None) -> None:  # fmt: skip
    """Register existing weights as a new version of NAME (printed on stdout).

    \b
    inferq models add iris --handler iris_model:IrisHandler --weights iris.safetensors --activate
    """
    _importable_here()
    version = add_model(
        load_settings(),
        name,
        handler,
        weights,
        config=_json_object(config_json, "--config"),
        activate=activate,
        load_check=not no_load_check,
        expected_sha256=sha256,
    )
    click.echo(version)


@models.command()
@click.argument("handler")
@click.option("--config", "config_json", default="{}", help="The model's config as JSON.")
@reports_errors
def describe(handler: str, config_json: str) -> None:
    """Print what inferq keeps about HANDLER: schemas, default config, tensors (JSON)."""
    from inferq.domain.weights import describe as describe_handler

    _importable_here()
    click.echo(
        json.dumps(describe_handler(handler, _json_object(config_json, "--config")).to_dict())
    )


@models.command()
@click.argument("handler")
@click.option("--weights", required=True, help="A .safetensors file or a model directory.")
@click.option("--example", "example", required=True, type=click.Path(exists=True, dir_okay=False),
              help="Inputs: one JSON object, a JSON list, or JSON lines.")  # fmt: skip
@click.option("--config", "config_json", default="{}", help="The model's config as JSON.")
@click.option("--max-batch", type=click.IntRange(min=1), default=None,
              help="Largest batch timed (default: config).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@reports_errors
def check(handler: str, weights: str, example: str, config_json: str, max_batch: int | None,
          as_json: bool) -> None:  # fmt: skip
    """Try HANDLER with WEIGHTS on the example inputs, in this process, before serving it.

    Checks that the examples fit the input schema, that outputs are JSON and one per input,
    and that a batch gives what the same inputs give one by one; times batch sizes 1..max
    (powers of two, and max itself).
    """
    from inferq.cli.model_check import run_check

    _importable_here()
    report = run_check(
        handler, Path(weights), Path(example), _json_object(config_json, "--config"), max_batch
    )
    click.echo(json.dumps(report.to_dict(), indent=2) if as_json else report.text())
    if not report.ok:
        sys.exit(1)


def _json_object(text: str, option: str) -> dict[str, Any]:
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise ConfigError(f"{option} is not JSON: {exc}") from exc
    if not isinstance(value, dict):
        raise ConfigError(f"{option} must be a JSON object")
    return value


def _importable_here() -> None:
    """A ``module:Class`` handler in the current directory imports, as with ``python -m``."""
    if "" not in sys.path and os.getcwd() not in sys.path:
        sys.path.insert(0, os.getcwd())


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
                        "size_bytes": v.size_bytes,
                        "artifact_uri": v.artifact_uri,
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
