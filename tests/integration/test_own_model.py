"""Serving a user's own model: an ``nn.Module`` and its safetensors weights, registered with
one command or over REST, then served like digits (jobs, batches, experiments). Bad input
is refused with a clear error and leaves nothing half-registered."""

from __future__ import annotations

import io
import json
import tarfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from safetensors.torch import save_file

from db.registry import get_model, list_versions
from inferq.cli import main
from inferq.cli.common import db_session
from inferq.core.broker import make_celery
from inferq.core.settings import Settings
from tests.fixture_models import tabular
from tests.integration.conftest import Caller
from tests.s3 import new_bucket
from workers.context import WorkerContext
from workers.runner import run_batch

HANDLER = "tests.fixture_models.tabular:TabularHandler"
PROBLEM = "application/problem+json"


@pytest.fixture
def ctx(settings: Settings, digits_version: int) -> Iterator[WorkerContext]:
    context = WorkerContext.create(
        settings, f"own-{uuid.uuid4().hex[:6]}@test", make_celery(settings)
    )
    yield context
    context.redis.close()


def saved(path: Path, hidden: int = 8, seed: int = 0) -> Path:
    save_file(tabular.weights(hidden, seed), str(path))
    return path


def cli(settings: Settings, *args: str) -> Any:
    return CliRunner().invoke(main, list(args), env=settings.to_env())


def new_name() -> str:
    return f"tab-{uuid.uuid4().hex[:8]}"


def versions_of(settings: Settings, name: str) -> list[int]:
    with db_session(settings) as session:
        model = get_model(session, name)
        return [] if model is None else [v.version for v in list_versions(session, [model.id])]


def serve(
    ctx: WorkerContext, caller: Caller, model: str, inputs: list[dict], users: bool = False
) -> list[dict]:
    """Submit ``inputs`` (each from its own end user, with ``users``), run them, read them."""
    ids = [
        caller.post(
            "/v1/jobs", {"model": model, "input": x, **({"user": f"u{i}"} if users else {})}
        ).get_json()["id"]
        for i, x in enumerate(inputs)
    ]
    run_batch(ctx, ids)
    return [caller.get(f"/v1/jobs/{job_id}").get_json() for job_id in ids]


def test_a_user_model_registers_with_one_command_and_serves_jobs(
    settings: Settings, ctx: WorkerContext, alice: Caller, tmp_path: Path
) -> None:
    # Given a user's module and the weights their training saved
    weights = saved(tmp_path / "model.safetensors")
    name = new_name()
    # When they register it
    result = cli(
        settings,
        "models",
        "add",
        name,
        "--handler",
        HANDLER,
        "--weights",
        str(weights),
        "--activate",
    )
    # Then it is version 1, its weights in the artifact store and not in Postgres
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == "1"
    listing = {m["name"]: m for m in json.loads(cli(settings, "models", "list").stdout)}
    (version,) = listing[name]["versions"]
    assert (
        version["artifact_uri"].startswith("file://")
        and version["size_bytes"] == weights.stat().st_size
    )
    # and jobs are served by it, the outputs its own module computes
    jobs = serve(ctx, alice, name, tabular.EXAMPLES)
    handler = tabular.TabularHandler(ctx.runtime.device)
    handler.load(tabular.weights(), {})
    expected = handler.predict([handler.prepare(x) for x in tabular.EXAMPLES])
    assert [j["status"] for j in jobs] == ["succeeded", "succeeded"]
    assert [j["output"] for j in jobs] == expected
    # the cold worker measured fetching and loading it (Prometheus)
    fetched = ctx.metrics.model_fetch.labels(name).collect()[0].samples
    assert any(s.name.endswith("_count") and s.value == 1 for s in fetched)
    # and its input schema came from the handler: the API refuses a bad input
    bad = alice.post("/v1/jobs", {"model": name, "input": {"features": [1, 2]}})
    assert bad.status_code == 422


def test_a_user_model_serves_batches_and_experiments(
    settings: Settings, ctx: WorkerContext, alice: Caller, operator: Caller, tmp_path: Path
) -> None:
    name = new_name()
    for seed in (0, 1):
        w = saved(tmp_path / f"w{seed}.safetensors", seed=seed)
        args = ["models", "add", name, "--handler", HANDLER, "--weights", str(w)]
        assert cli(settings, *args, *(["--activate"] if seed == 0 else [])).exit_code == 0
    # a batch
    body = "".join(json.dumps(x) + "\n" for x in tabular.EXAMPLES * 3).encode()
    batch = alice.http.post(
        f"/v1/batches?model={name}",
        data=body,
        headers=alice.headers({"Content-Type": "application/x-ndjson"}),
    ).get_json()
    ids = [row["id"] for row in _batch_jobs(settings, batch["id"])]
    run_batch(ctx, ids)
    done = alice.get(f"/v1/batches/{batch['id']}").get_json()
    assert done["counts"]["succeeded"] == 6, done
    # an A/B experiment between its two versions: both arms serve
    experiment = operator.post(
        "/v1/experiments",
        {"model": name, "arms": [{"version": 1, "weight": 0.5}, {"version": 2, "weight": 0.5}]},
    )
    assert experiment.status_code == 201, experiment.get_json()
    inputs = [{"features": [float(i), 1.0, 2.0, 3.0]} for i in range(40)]
    jobs = serve(ctx, alice, name, inputs, users=True)
    assert {j["status"] for j in jobs} == {"succeeded"}
    assert {j["version"] for j in jobs} == {1, 2}
    operator.post(f"/v1/experiments/{experiment.get_json()['id']}/stop", {})


def _batch_jobs(settings: Settings, batch_id: str) -> list[dict]:
    from sqlalchemy import text

    with db_session(settings) as session:
        rows = session.execute(text("SELECT id FROM jobs WHERE batch_id = :b"), {"b": batch_id})
        return [{"id": str(r[0])} for r in rows]


def not_safetensors(tmp: Path) -> Path:
    (tmp / "model.safetensors").write_bytes(b"PK\x03\x04 a zip, or a pickle: not safetensors")
    return tmp / "model.safetensors"


def truncated(tmp: Path) -> Path:
    whole = saved(tmp / "whole.safetensors").read_bytes()
    (tmp / "cut.safetensors").write_bytes(whole[: len(whole) - 100])
    return tmp / "cut.safetensors"


@pytest.mark.parametrize(
    ("make", "handler", "says"),
    [
        (lambda tmp: saved(tmp / "w.safetensors"), "no_such_module:Handler", "cannot import"),
        (
            lambda tmp: saved(tmp / "w.safetensors"),
            "tests.fixture_models.tabular:Nope",
            "has no 'Nope'",
        ),
        (lambda tmp: saved(tmp / "w.safetensors"), "json:JSONDecoder", "not a ModelHandler"),
        (not_safetensors, HANDLER, "not safetensors"),
        (truncated, HANDLER, "truncated"),
        (lambda tmp: saved(tmp / "w.safetensors", hidden=16), HANDLER, "shape"),
        (lambda tmp: tmp / "absent.safetensors", HANDLER, "no such file"),
    ],
)
def test_bad_registrations_are_one_line_errors_and_register_nothing(
    settings: Settings, digits_version: int, tmp_path: Path, make: Any, handler: str, says: str
) -> None:
    name = new_name()
    result = cli(
        settings, "models", "add", name, "--handler", handler, "--weights", str(make(tmp_path))
    )
    assert result.exit_code == 1, result.output
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("error: ") and says in line, line
    assert versions_of(settings, name) == []


def test_a_digest_given_with_the_weights_must_match(
    settings: Settings, digits_version: int, tmp_path: Path
) -> None:
    name, weights = new_name(), saved(tmp_path / "w.safetensors")
    args = ["models", "add", name, "--handler", HANDLER, "--weights", str(weights)]
    wrong = cli(settings, *args, "--sha256", "0" * 64)
    assert wrong.exit_code == 1 and "digest" in wrong.stderr and versions_of(settings, name) == []
    import hashlib

    right = cli(settings, *args, "--sha256", hashlib.sha256(weights.read_bytes()).hexdigest())
    assert right.exit_code == 0, right.output


# -- over REST -------------------------------------------------------------------------


def test_an_admin_registers_a_model_and_uploads_versions(
    settings: Settings, ctx: WorkerContext, operator: Caller, alice: Caller, tmp_path: Path
) -> None:
    name = new_name()
    # the model: its schemas come from the handler (described in a child process)
    created = operator.post(
        "/v1/models", {"name": name, "handler": HANDLER, "config": {"hidden": 8}}
    )
    assert created.status_code == 201, created.get_json()
    assert created.get_json()["input_schema"] == tabular.TabularHandler.input_schema
    # a version as one safetensors file, streamed
    data = saved(tmp_path / "w.safetensors").read_bytes()
    headers = operator.headers({"Content-Type": "application/octet-stream"})
    up = operator.http.post(f"/v1/models/{name}/versions?activate=true", data=data, headers=headers)
    assert up.status_code == 201, up.get_json()
    assert up.get_json()["version"] == 1 and up.get_json()["artifact"]["kind"] == "file"
    # a version as a directory (a tar of a config and two shards)
    shards = tabular.weights(seed=3)
    keys = sorted(shards)
    folder = tmp_path / "dir"
    folder.mkdir()
    save_file({k: shards[k] for k in keys[:2]}, str(folder / "model-1.safetensors"))
    save_file({k: shards[k] for k in keys[2:]}, str(folder / "model-2.safetensors"))
    (folder / "config.json").write_text('{"hidden": 8}')
    tar = io.BytesIO()
    with tarfile.open(fileobj=tar, mode="w") as archive:
        archive.add(folder, arcname=".")
    headers = operator.headers({"Content-Type": "application/x-tar"})
    tree = operator.http.post(f"/v1/models/{name}/versions", data=tar.getvalue(), headers=headers)
    assert tree.status_code == 201, tree.get_json()
    assert sorted(f["path"] for f in tree.get_json()["artifact"]["files"]) == [
        "config.json", "model-1.safetensors", "model-2.safetensors"
    ]  # fmt: skip
    # a version from what the store already holds
    by_uri = operator.post(f"/v1/models/{name}/versions", {"uri": up.get_json()["artifact"]["uri"]})
    assert by_uri.status_code == 201 and by_uri.get_json()["sha256"] == up.get_json()["sha256"]
    # the active version serves; the sharded one serves once promoted
    assert serve(ctx, alice, name, tabular.EXAMPLES[:1])[0]["status"] == "succeeded"
    assert operator.post(f"/v1/models/{name}/versions/2/promote", {}).status_code == 200
    job = serve(ctx, alice, name, tabular.EXAMPLES[:1])[0]
    assert (job["status"], job["version"]) == ("succeeded", 2)


def _problem(response: Any, status: int, says: str) -> None:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == PROBLEM
    assert says in response.get_json()["detail"], response.get_json()


def test_bad_uploads_are_4xx_problems_and_register_nothing(
    settings: Settings, operator: Caller, alice: Caller, tmp_path: Path
) -> None:
    name = new_name()
    assert operator.post("/v1/models", {"name": name, "handler": HANDLER}).status_code == 201
    octet = operator.headers({"Content-Type": "application/octet-stream"})
    url = f"/v1/models/{name}/versions"
    _problem(
        operator.http.post(url, data=b"not safetensors at all", headers=octet),
        422,
        "not safetensors",
    )
    _problem(
        operator.http.post(url, data=truncated(tmp_path).read_bytes(), headers=octet),
        422,
        "truncated",
    )
    wide = saved(tmp_path / "wide.safetensors", hidden=16).read_bytes()
    _problem(operator.http.post(url, data=wide, headers=octet), 422, "shape")
    _problem(operator.post(url, {"uri": "s3://somewhere-else/model.safetensors"}), 422, "outside")
    _problem(
        operator.post("/v1/models", {"name": new_name(), "handler": "no_such:Handler"}),
        422,
        "cannot import",
    )
    _problem(
        operator.post("/v1/models", {"name": name, "handler": "digits"}), 409, "keeps its handler"
    )
    _problem(
        operator.http.post("/v1/models/nope/versions", data=b"x", headers=octet), 404, "No model"
    )
    plain = operator.headers({"Content-Type": "text/plain"})
    _problem(operator.http.post(url, data=b"x", headers=plain), 415, "safetensors")
    good = saved(tmp_path / "w.safetensors").read_bytes()
    _problem(
        alice.http.post(
            url, data=good, headers=alice.headers({"Content-Type": "application/octet-stream"})
        ),
        403,
        "operator",
    )
    _problem(
        operator.http.post(f"{url}?sha256={'0' * 64}", data=good, headers=octet), 422, "digest"
    )
    assert versions_of(settings, name) == []


def _without_last_layer_bias(tensors: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in tensors.items() if k != "layers.2.bias"}


def _with_an_extra_tensor(tensors: dict[str, Any]) -> dict[str, Any]:
    return {**tensors, "head.weight": tensors["layers.2.weight"].clone()}


def _saved_from_a_wrapper(tensors: dict[str, Any]) -> dict[str, Any]:
    return {f"module.{k}": v for k, v in tensors.items()}  # DataParallel's prefix


def _reshaped(tensors: dict[str, Any]) -> dict[str, Any]:
    return {**tensors, "layers.2.bias": tensors["layers.2.bias"].repeat(2)}


@pytest.mark.parametrize(
    ("change", "says"),
    [
        (_without_last_layer_bias, "missing tensor 'layers.2.bias'"),
        (_with_an_extra_tensor, "unexpected tensor 'head.weight'"),
        (_saved_from_a_wrapper, "missing tensor 'layers.0.bias'; missing tensor"),
        (_reshaped, "tensor 'layers.2.bias' has shape [6], the model wants [3]"),
    ],
    ids=["missing", "unexpected", "prefixed", "shape"],
)
@pytest.mark.parametrize("form", ["file", "tar"])
def test_tensors_that_do_not_fit_the_handler_are_a_422_over_rest_and_register_nothing(
    settings: Settings, operator: Caller, tmp_path: Path, change: Any, says: str, form: str
) -> None:
    """Given a model whose handler builds TabularNet, when an operator uploads weights with a
    tensor missing, one too many, every name prefixed, or one misshapen (one file, or a tar
    of two shards), then the API answers 422 with a problem naming the tensor, and the model
    has no version.

    Catches: mismatches() comparing shapes only (names missing or unexpected would register
    a version that fails only when a worker loads it), or shards checked one by one."""
    name = new_name()
    assert operator.post("/v1/models", {"name": name, "handler": HANDLER}).status_code == 201
    tensors = change(tabular.weights())
    url = f"/v1/models/{name}/versions?activate=true"
    if form == "file":
        save_file(tensors, str(tmp_path / "w.safetensors"))
        body, kind = (tmp_path / "w.safetensors").read_bytes(), "application/octet-stream"
    else:
        keys = sorted(tensors)
        folder = tmp_path / "dir"
        folder.mkdir()
        save_file({k: tensors[k] for k in keys[:2]}, str(folder / "model-1.safetensors"))
        save_file({k: tensors[k] for k in keys[2:]}, str(folder / "model-2.safetensors"))
        tar = io.BytesIO()
        with tarfile.open(fileobj=tar, mode="w") as archive:
            archive.add(folder, arcname=".")
        body, kind = tar.getvalue(), "application/x-tar"

    response = operator.http.post(url, data=body, headers=operator.headers({"Content-Type": kind}))

    _problem(response, 422, says)
    assert response.get_json()["detail"].startswith("The artifact cannot be used: the weights do")
    assert versions_of(settings, name) == []


def test_an_upload_over_the_limit_is_413(
    settings: Settings, digits_version: int, operator_key: str, tmp_path: Path
) -> None:
    from api.app import create_app

    small = create_app(settings.replace(max_artifact_bytes=200)).test_client()
    caller = Caller(small, operator_key)
    name = new_name()
    assert caller.post("/v1/models", {"name": name, "handler": HANDLER}).status_code == 201
    octet = caller.headers({"Content-Type": "application/octet-stream"})
    big = saved(tmp_path / "w.safetensors").read_bytes()
    assert len(big) > 200
    _problem(
        small.post(f"/v1/models/{name}/versions", data=big, headers=octet), 413, "larger than 200"
    )
    assert versions_of(settings, name) == []


def test_a_missing_artifact_fails_its_versions_jobs_and_the_worker_serves_the_rest(
    settings: Settings, ctx: WorkerContext, alice: Caller, tmp_path: Path
) -> None:
    """Catches: a load failure that escapes the batch (the worker would drop every job in it,
    or die) instead of failing that version's jobs with a clear error."""
    name = new_name()
    weights = saved(tmp_path / "w.safetensors", seed=5)
    assert (
        cli(
            settings,
            "models",
            "add",
            name,
            "--handler",
            HANDLER,
            "--weights",
            str(weights),
            "--activate",
        ).exit_code
        == 0
    )
    # the blob disappears from the store before any worker fetched it
    import hashlib

    from inferq.core.artifacts import blob_key, open_store

    store = open_store(settings)
    (
        Path(store.uri.removeprefix("file://"))
        / blob_key(hashlib.sha256(weights.read_bytes()).hexdigest())
    ).unlink()
    ours = alice.post("/v1/jobs", {"model": name, "input": tabular.EXAMPLES[0]}).get_json()["id"]
    pixels = {"pixels": [0] * 64}
    digits = alice.post("/v1/jobs", {"model": "digits", "input": pixels}).get_json()["id"]
    run_batch(ctx, [ours, digits])
    failed, served = (
        alice.get(f"/v1/jobs/{ours}").get_json(),
        alice.get(f"/v1/jobs/{digits}").get_json(),
    )
    assert failed["status"] == "failed" and failed["error"]["type"] == "model-unavailable"
    assert "has nothing at" in failed["error"]["message"]
    assert served["status"] == "succeeded"


def test_a_tampered_artifact_of_the_same_size_fails_its_jobs_and_the_worker_serves_the_rest(
    settings: Settings, ctx: WorkerContext, alice: Caller, tmp_path: Path
) -> None:
    """Given a registered version whose blob in the store then has one byte of its weights
    flipped (same size, still valid safetensors), when a worker serves a batch of its jobs
    and digits', then those jobs fail with a clear model-unavailable error naming the digest,
    and digits' job is served.

    Catches: the SHA-256 comparison in ArtifactCache._download turned into a size check (the
    tampered weights would load and serve)."""
    import hashlib

    from inferq.core.artifacts import blob_key, open_store

    name, weights = new_name(), saved(tmp_path / "w.safetensors", seed=14)
    added = cli(settings, "models", "add", name, "--handler", HANDLER,
                "--weights", str(weights), "--activate")  # fmt: skip
    assert added.exit_code == 0, added.output
    sha256 = hashlib.sha256(weights.read_bytes()).hexdigest()
    blob = Path(open_store(settings).uri.removeprefix("file://")) / blob_key(sha256)
    data = bytearray(blob.read_bytes())
    data[-1] ^= 0x01  # the last byte of the last tensor: the header still parses
    blob.write_bytes(bytes(data))
    ours = alice.post("/v1/jobs", {"model": name, "input": tabular.EXAMPLES[0]}).get_json()["id"]
    pixels = {"pixels": [0] * 64}
    digits = alice.post("/v1/jobs", {"model": "digits", "input": pixels}).get_json()["id"]

    run_batch(ctx, [ours, digits])

    failed = alice.get(f"/v1/jobs/{ours}").get_json()
    assert failed["status"] == "failed" and failed["error"]["type"] == "model-unavailable"
    message = failed["error"]["message"]
    assert "damaged" in message and f"expected sha256 {sha256}" in message, message
    assert alice.get(f"/v1/jobs/{digits}").get_json()["status"] == "succeeded"
    assert not (settings.artifact_cache_path / "blobs" / sha256).exists()  # never cached


def test_a_model_in_s3_registers_and_serves(
    settings: Settings, digits_version: int, alice: Caller, s3_endpoint: str, tmp_path: Path
) -> None:
    """The S3 backend end to end against a real S3-compatible server: the CLI uploads the
    weights, a worker on the same settings fetches them from the bucket and serves."""
    bucket = new_bucket(s3_endpoint)
    on_s3 = settings.replace(
        artifact_store=f"s3://{bucket}/inferq", s3_endpoint_url=s3_endpoint, s3_region="us-east-1"
    )
    name, weights = new_name(), saved(tmp_path / "w.safetensors", seed=9)
    result = cli(
        on_s3, "models", "add", name, "--handler", HANDLER, "--weights", str(weights), "--activate"
    )
    assert result.exit_code == 0, result.output
    listing = {m["name"]: m for m in json.loads(cli(on_s3, "models", "list").stdout)}
    assert listing[name]["versions"][0]["artifact_uri"].startswith(f"s3://{bucket}/inferq/blobs/")
    worker = WorkerContext.create(
        on_s3.replace(artifact_cache_dir=str(tmp_path / "cache")), "s3@test", make_celery(on_s3)
    )
    job = serve(worker, alice, name, tabular.EXAMPLES[:1])[0]
    assert job["status"] == "succeeded", job
    assert any((tmp_path / "cache" / "blobs").iterdir())
