"""Registering a model version: a handler's description, weights that fit it, one row.

Free of torch (the API imports it); what needs torch, describing a handler and writing
trained weights, is in :mod:`inferq.domain.weights`.

Used by ``inferq models add`` and ``train``, by training runs, by ``inferq up`` (digits on
first start), by ``POST /v1/models/{name}/versions`` and by migration 0008. The handler is
code the operator installs; the artifact is data only, checked before any row is written,
so a refused registration leaves nothing behind but content-addressed blobs.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session

from db.registry import add_version, ensure_model, get_model
from db.tables import Model, ModelVersion
from inferq.core.artifacts.header import mismatches, read_header
from inferq.core.artifacts.manifest import Artifact
from inferq.core.artifacts.store import ArtifactStore, blob_key
from inferq.core.errors import ArtifactError, ModelError

NAME_PATTERN = r"^[a-z][a-z0-9_-]{0,63}$"


@dataclasses.dataclass(frozen=True)
class HandlerDescription:
    """What inferq keeps about a handler: its schemas, default config and tensor spec."""

    handler: str
    input_schema: dict[str, Any]
    label_schema: dict[str, Any] | None
    default_config: dict[str, Any]
    tensor_spec: dict[str, Any] | None

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``inferq models describe``)."""
        return dataclasses.asdict(self)


def describe_in_subprocess(
    handler: str, config: Mapping[str, Any], timeout_s: float = 120
) -> HandlerDescription:
    """``describe`` (:mod:`inferq.domain.weights`) in a child process, ``inferq models
    describe``: for the API, which never imports torch or a handler itself."""
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "inferq",
            "models",
            "describe",
            handler,
            "--config",
            json.dumps(dict(config)),
        ],
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["unknown error"])[-1].removeprefix(
            "error: "
        )
        raise ModelError(reason)
    return HandlerDescription(**json.loads(result.stdout))


def check_weights(store: ArtifactStore, artifact: Artifact, spec: Mapping[str, Any] | None) -> None:
    """Raise ArtifactError unless every ``.safetensors`` file of ``artifact`` is whole
    safetensors and, together, they hold exactly the tensors ``spec`` names (when given)."""
    weights = [entry for entry in artifact.files if _is_weights(entry.path, artifact.kind)]
    if not weights:
        raise ArtifactError("the artifact holds no .safetensors file")
    found: dict[str, Any] = {}
    for entry in weights:
        with store.open(blob_key(entry.sha256)) as stream:
            tensors, _ = read_header(stream, entry.size, entry.path)
        found.update(tensors)
    if spec is not None and (problems := mismatches(found, spec)):
        shown = "; ".join(problems[:5]) + (
            f"; and {len(problems) - 5} more" if len(problems) > 5 else ""
        )
        raise ArtifactError(f"the weights do not fit the model: {shown}")


def expect_digest(artifact: Artifact, expected: str | None) -> None:
    """Raise ArtifactError when a digest was given and ``artifact`` has another."""
    if expected and expected.strip().lower() != artifact.sha256:
        raise ArtifactError(
            f"digest mismatch: expected sha256 {expected[:64]}, the artifact has {artifact.sha256}"
        )


def _is_weights(path: str, kind: str) -> bool:
    return kind == "file" or path.endswith(".safetensors")


def register(
    session: Session,
    name: str,
    description: HandlerDescription,
    artifact: Artifact,
    *,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    created_by: str,
    activate: bool,
) -> ModelVersion:
    """Create (or refresh) model ``name`` from ``description`` and add ``artifact`` as its
    next version, in the caller's transaction."""
    existing = get_model(session, name)
    merged = {
        **description.default_config,
        **(existing.config if existing else {}),
        **dict(config or {}),
    }
    model = ensure_model(
        session,
        name,
        handler=description.handler,
        input_schema=description.input_schema,
        config=merged,
        label_schema=description.label_schema,
        tensor_spec=description.tensor_spec,
    )
    return add_version_of(
        session, model, artifact, metrics=metrics, created_by=created_by, activate=activate
    )


def add_version_of(
    session: Session,
    model: Model,
    artifact: Artifact,
    *,
    metrics: Mapping[str, Any] | None = None,
    created_by: str,
    activate: bool,
) -> ModelVersion:
    """Add ``artifact`` as ``model``'s next version."""
    return add_version(
        session,
        model,
        artifact_uri=artifact.uri,
        artifact_kind=artifact.kind,
        sha256=artifact.sha256,
        size_bytes=artifact.size,
        files=artifact.file_list(),
        metrics=dict(metrics or {}),
        created_by=created_by[:128],
        activate=activate,
    )


def legacy_sink(store: ArtifactStore) -> Any:
    """For migration 0008: put a version's bytes held in Postgres into ``store``."""

    def sink(data: bytes, sha256: str) -> tuple[str, list[dict[str, Any]]]:
        with tempfile.TemporaryDirectory(prefix="inferq-migrate-") as folder:
            path = Path(folder) / "model.safetensors"
            path.write_bytes(data)
            artifact = store.ingest_path(path)
        if artifact.sha256 != sha256:
            raise ArtifactError(f"a stored version's bytes do not match its digest {sha256}")
        return artifact.uri, artifact.file_list()

    return sink
