"""Registering models and versions over REST: the artifact streamed to the store, never held
whole in memory; the handler described in a child process (the API imports neither torch nor
handlers); nothing written to Postgres unless the weights fit.

A version's artifact comes as one of:

- ``application/octet-stream``: one safetensors file;
- ``application/x-tar``: a directory (config, tokenizer, shards…), streamed and unpacked
  member by member (plain files only; no links, no paths outside the directory);
- ``application/json`` ``{"uri": "s3://…"}``: an object or prefix the store already holds.
"""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import IO, Any

from flask import request
from werkzeug.exceptions import RequestEntityTooLarge

from api.state import ApiState
from db.registry import ensure_model, get_model
from db.tables import Model, ModelVersion
from inferq.core.artifacts.manifest import Artifact, safe_relative
from inferq.core.artifacts.store import ArtifactStore, ArtifactTooLarge, open_store
from inferq.core.errors import (
    ArtifactError,
    Conflict,
    InvalidInput,
    ModelError,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
)
from inferq.domain.registration import (
    add_version_of,
    check_weights,
    describe_in_subprocess,
    expect_digest,
)

TAR_TYPES = ("application/x-tar", "application/tar")


def store(st: ApiState) -> ArtifactStore:
    """The artifact store (built once per process: a client, no connection)."""
    if st.artifacts is None:
        st.artifacts = open_store(st.settings)
    return st.artifacts


def create_model(
    st: ApiState, name: str, handler: str, config: dict[str, Any]
) -> tuple[Model, bool]:
    """Register model ``name`` served by ``handler`` (or refresh it); True when new."""
    with st.sessions() as session:
        existing = get_model(session, name)
    if existing is not None and existing.handler != handler:
        raise Conflict(
            f"Model {name!r} is served by {existing.handler!r}; a model keeps its handler."
        )
    try:
        described = describe_in_subprocess(handler, config)
    except ModelError as exc:
        raise InvalidInput(
            f"The handler {handler!r} cannot be used: {exc}",
            errors=[{"pointer": "/handler", "detail": str(exc)[:300]}],
        ) from exc
    with st.sessions.begin() as session:
        model = ensure_model(
            session,
            name,
            handler=handler,
            input_schema=described.input_schema,
            config={**described.default_config, **(existing.config if existing else {}), **config},
            label_schema=described.label_schema,
            tensor_spec=described.tensor_spec,
        )
    st.models.forget(name)
    return model, existing is None


def receive_artifact(st: ApiState) -> Artifact:
    """The request body stored as an artifact (see the module's docstring for the forms)."""
    limit = st.settings.artifacts.max_artifact_bytes
    mimetype = request.mimetype or ""
    try:
        if mimetype == "application/octet-stream":
            return store(st).ingest_stream(_body(limit), limit)
        if mimetype in TAR_TYPES:
            return _ingest_tar(store(st), _body(limit), limit)
    except (ArtifactTooLarge, RequestEntityTooLarge) as exc:
        raise PayloadTooLarge(f"The artifact is larger than {limit} bytes.") from exc
    except ArtifactError as exc:
        raise InvalidInput(f"The artifact cannot be used: {exc}") from exc
    raise UnsupportedMediaType(
        "Send a safetensors file ('Content-Type: application/octet-stream'), a directory as a "
        "tar ('Content-Type: application/x-tar'), or a JSON object {\"uri\": ...} naming what "
        "the artifact store holds ('Content-Type: application/json')."
    )


def artifact_at(st: ApiState, uri: str) -> Artifact:
    """An artifact the store already holds at ``uri``."""
    try:
        return store(st).ingest_uri(uri)
    except ArtifactError as exc:
        raise InvalidInput(
            str(exc), errors=[{"pointer": "/uri", "detail": str(exc)[:300]}]
        ) from exc


def add_version(
    st: ApiState, name: str, artifact: Artifact, *, activate: bool, created_by: str
) -> ModelVersion:
    """Add ``artifact`` as the next version of ``name`` once it fits the model's tensors."""
    with st.sessions() as session:
        model = get_model(session, name)
    if model is None:
        raise NotFound(f"No model named {name[:64]!r}; create it first (POST /v1/models).")
    try:
        expect_digest(artifact, request.args.get("sha256"))
        check_weights(store(st), artifact, model.tensor_spec)
    except ArtifactError as exc:
        raise InvalidInput(f"The artifact cannot be used: {exc}") from exc
    with st.sessions.begin() as session:
        row = get_model(session, name)
        assert row is not None
        version = add_version_of(session, row, artifact, created_by=created_by, activate=activate)
    st.models.forget(name)
    return version


def _body(limit: int) -> IO[bytes]:
    request.max_content_length = limit
    return request.stream


def _ingest_tar(target: ArtifactStore, stream: IO[bytes], limit: int) -> Artifact:
    """Unpack a streamed tar into a scratch directory, then store it as one artifact."""
    scratch = Path(tempfile.mkdtemp(prefix="inferq-upload-"))
    try:
        total = 0
        with tarfile.open(fileobj=stream, mode="r|*") as archive:
            for member in archive:
                if member.isdir():
                    continue
                if not member.isfile():
                    raise ArtifactError(f"{member.name!r} is not a plain file (links are refused)")
                total += member.size
                if total > limit:
                    raise ArtifactTooLarge(f"the artifact is larger than {limit} bytes")
                path = scratch / safe_relative(member.name)
                path.parent.mkdir(parents=True, exist_ok=True)
                source = archive.extractfile(member)
                assert source is not None
                with path.open("wb") as out:
                    shutil.copyfileobj(source, out, 1 << 20)
        return target.ingest_path(scratch)
    except tarfile.TarError as exc:
        raise ArtifactError(f"the body is not a tar archive: {exc}") from exc
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
