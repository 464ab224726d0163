"""Inputs for tests: digits from the holdout set, with their true labels."""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import functools
import io
import uuid
from typing import Any


def holdout(count: int | None = None) -> list[tuple[dict[str, Any], int]]:
    """``(input, true label)`` pairs from digits' fixed holdout split."""
    from workers.handlers.digits import dataset

    split = dataset()
    pairs = [
        ({"pixels": [float(v) for v in x]}, int(y))
        for x, y in zip(split.holdout_x, split.holdout_y, strict=True)
    ]
    return pairs[:count] if count else pairs


def pixels(value: float = 0.0, count: int = 64) -> dict[str, Any]:
    """A pixels input of ``count`` copies of ``value``."""
    return {"pixels": [value] * count}


def png_of(pixels: list[float], size: int = 32, ink_dark: bool = True) -> str:
    """A base64 PNG drawing an 8x8 digit at ``size``x``size``, dark ink on white by default."""
    import numpy as np
    from PIL import Image

    grey = np.array(pixels, dtype=np.float32).reshape(8, 8) / 16.0 * 255.0
    if ink_dark:
        grey = 255.0 - grey
    image = Image.fromarray(grey.astype("uint8"), "L").resize(
        (size, size), Image.Resampling.NEAREST
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def register_fixture_model(settings: Any, name: str, handler: str, config: dict[str, Any]) -> None:
    """Serve ``name`` by a fixture handler (``module:Class``) with digits' active weights."""
    from db.registry import ensure_model, get_model, loadable_version
    from inferq.cli.common import db_session
    from workers.handlers.digits import INPUT_SCHEMA

    with db_session(settings) as session:
        digits = get_model(session, "digits")
        assert digits is not None and digits.active_version_id is not None
        weights = loadable_version(session, digits.active_version_id)
        assert weights is not None
        model = ensure_model(session, name, handler, INPUT_SCHEMA, config)
        if model.active_version_id is None:
            same_artifact_version(session, model, weights, metrics={}, activate=True)


def quiet_lane(settings: Any, lane: str = "online") -> None:
    """Empty ``lane`` of what earlier tests left: its messages on this broker, and its open
    jobs in the database (their stacks are gone), which are cancelled.

    A run's tests share one database and namespace, and the lane's ready messages and open
    jobs are what positions, ETAs and the autoscaler's backlog count: a test measuring those
    starts here.
    """
    from sqlalchemy import text

    from inferq.cli.common import db_session
    from inferq.core.broker import make_celery, queue_name

    app = make_celery(settings)
    # on RabbitMQ a queue never declared holds nothing, and purging it is an error
    with (
        app.connection_for_write() as connection,
        contextlib.suppress(*connection.channel_errors),
    ):
        connection.default_channel.queue_purge(queue_name(settings, lane))
    with db_session(settings) as session:
        session.execute(
            text(
                "UPDATE jobs SET status = 'canceled'"
                " WHERE status IN ('queued', 'running') AND lane = :lane"
            ),
            {"lane": lane},
        )


def running_on(database_url: str, worker: str) -> int:
    """How many jobs a worker (by its ``--name``, any incarnation) holds as running now."""
    return len(running_ids(database_url, worker))


def running_ids(database_url: str, worker: str) -> set[str]:
    """The ids of the jobs a worker (by its ``--name``, any incarnation) holds as running now."""
    from sqlalchemy import create_engine, text
    from sqlalchemy.pool import NullPool

    engine = create_engine(database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            rows = conn.scalars(
                text("SELECT id FROM jobs WHERE status = 'running' AND worker LIKE :w"),
                {"w": f"{worker}@%"},
            )
            return {str(job_id) for job_id in rows}
    finally:
        engine.dispose()


@dataclasses.dataclass(frozen=True)
class Artifact:
    """Weights to register as a model version."""

    data: bytes
    sha256: str
    metrics: dict[str, float]


@functools.cache
def digits_variants() -> dict[str, Artifact]:
    """digits weights of known, different quality, trained once per process: ``good`` on the
    training split, ``bad`` on the same inputs with 70% of the labels shuffled, ``broken``
    bytes that are no safetensors (every job on them fails)."""
    import numpy as np

    from inferq.core.artifacts import digest, pack
    from workers.handlers.digits import dataset, evaluate, fit

    split = dataset()
    rng = np.random.default_rng(7)
    corrupted = split.train_y.copy()
    chosen = rng.choice(len(corrupted), int(0.7 * len(corrupted)), replace=False)
    corrupted[chosen] = rng.permutation(corrupted[chosen])
    found = {}
    for name, labels, epochs in (("good", split.train_y, 8), ("bad", corrupted, 4)):
        net = fit(split.train_x, labels, seed=0, epochs=epochs)
        data, sha256 = pack(net.state_dict(), {"architecture": "DigitsNet", "variant": name})
        accuracy = evaluate(net, split.holdout_x, split.holdout_y)
        found[name] = Artifact(data, sha256, {"holdout_accuracy": accuracy})
    junk = b"these bytes are not safetensors"
    found["broken"] = Artifact(junk, digest(junk), {})
    return found


def stored_version(
    session: Any,
    settings: Any,
    model: Any,
    data: bytes,
    *,
    metrics: dict[str, Any] | None = None,
    activate: bool,
    created_by: str = "tests",
) -> Any:
    """``data`` (bytes meant as a safetensors file, or not) put in the run's artifact store and
    added as ``model``'s next version, unchecked: a broken artifact registers too."""
    import tempfile
    from pathlib import Path

    from inferq.core.artifacts import open_store
    from inferq.domain.registration import add_version_of

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "model.safetensors"
        path.write_bytes(data)
        artifact = open_store(settings).ingest_path(path)
    return add_version_of(
        session, model, artifact, metrics=metrics, created_by=created_by, activate=activate
    )


def same_artifact_version(
    session: Any, model: Any, loadable: Any, *, metrics: dict[str, Any], activate: bool
) -> Any:
    """Another version of ``model`` on the artifact a loadable version row points at."""
    from inferq.domain.registration import add_version_of
    from workers.runtime import artifact_of

    return add_version_of(
        session,
        model,
        artifact_of(loadable),
        metrics=metrics,
        created_by="tests",
        activate=activate,
    )


def stored_bytes(settings: Any, artifact_uri: str) -> bytes:
    """The bytes of a single-file artifact."""
    from inferq.core.artifacts.store import open_store_at, root_of

    store = open_store_at(root_of(artifact_uri), settings)
    return store.read_bytes(store.key_of(artifact_uri))


def experiment_model(
    settings: Any, versions: list[Artifact], active: int, config: dict[str, Any] | None = None
) -> str:
    """A fresh model served by the digits handler with ``versions`` (numbered from 1), of
    which ``active`` serves; returns its name. ``config`` is laid over the handler's default
    config (``{"train_options": {"epochs": 12}}`` trains in a few seconds)."""
    from db.registry import ensure_model
    from inferq.cli.common import db_session
    from workers.handlers.digits import DigitsHandler

    name = f"digits-{uuid.uuid4().hex[:8]}"
    with db_session(settings) as session:
        model = ensure_model(
            session,
            name,
            "digits",
            DigitsHandler.input_schema,
            {**DigitsHandler.default_config, **(config or {})},
            DigitsHandler.label_schema,
        )
        for number, artifact in enumerate(versions, start=1):
            stored_version(
                session,
                settings,
                model,
                artifact.data,
                metrics=artifact.metrics,
                activate=number == active,
            )
    return name


def leave_no_pending_rollout(settings: Any, model: str) -> None:
    """Mark ``model``'s runs still waiting for a rollout ``registered`` (left for an admin).

    A scheduler's rollout pass takes every pending run in the database: a test that trains
    without a scheduler, or stops its scheduler first, leaves none for a later test's pass.
    """
    from sqlalchemy import update

    from db.registry import get_model
    from db.tables import TrainingRun
    from inferq.cli.common import db_session

    with db_session(settings) as session:
        row = get_model(session, model)
        assert row is not None
        session.execute(
            update(TrainingRun)
            .where(TrainingRun.model_id == row.id, TrainingRun.rollout == "pending")
            .values(rollout="registered", rollout_reason="left by a test without a scheduler")
        )


def bare_model(conn: Any) -> tuple[uuid.UUID, int, int]:
    """A tenant, a model and its version as bare rows, for tests that write jobs with SQL:
    ``(tenant_id, model_id, version_id)``. ``conn`` is a SQLAlchemy connection in a
    transaction."""
    from sqlalchemy import text

    tenant = uuid.uuid4()
    conn.execute(text("INSERT INTO tenants (id, name) VALUES (:t, 'acme')"), {"t": tenant})
    model_id = conn.scalar(
        text(
            "INSERT INTO models (name, handler, input_schema) VALUES"
            " ('digits', 'digits', '{\"type\": \"object\"}') RETURNING id"
        )
    )
    version_id = conn.scalar(
        text(
            "INSERT INTO model_versions (model_id, version, artifact_uri, sha256,"
            " size_bytes, status, created_by) VALUES"
            " (:m, 1, 'file:///none', repeat('0', 64), 1, 'active', 'test') RETURNING id"
        ),
        {"m": model_id},
    )
    return tenant, model_id, version_id
