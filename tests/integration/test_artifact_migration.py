"""Migration 0008: versions whose weights were stored in Postgres move to the artifact store,
and keep serving."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from sqlalchemy import create_engine, text

from db.migrate import upgrade
from inferq.core.artifacts import blob_key, open_store, pack
from inferq.core.settings import Settings
from inferq.domain.registration import legacy_sink
from tests.services import Services, create_database
from workers.artifact_cache import ArtifactCache
from workers.handlers.digits import DigitsNet
from workers.runtime import ModelRuntime


@pytest.fixture
def old_database(services: Services) -> Iterator[str]:
    """A database at revision 0007 holding digits v1 the old way: bytes in a bytea column."""
    url, drop = create_database(services.postgres_url)
    upgrade(url, "0007")
    torch.manual_seed(0)
    data, sha256 = pack(DigitsNet().state_dict(), {"architecture": "DigitsNet"})
    engine = create_engine(url)
    with engine.begin() as conn:
        model_id = conn.scalar(
            text(
                "INSERT INTO models (name, handler, input_schema, config) "
                "VALUES ('digits', 'digits', CAST(:schema AS jsonb), '{}') RETURNING id"
            ),
            {"schema": json.dumps({"type": "object"})},
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
