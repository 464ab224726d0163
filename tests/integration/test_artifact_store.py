"""The artifact store (a directory, and S3 through a real S3-compatible server) and a
worker's local cache of it: content addressed, verified, bounded, reused."""

from __future__ import annotations

import hashlib
import os
import random
from pathlib import Path

import pytest

from inferq.core.artifacts import ArtifactStore, blob_key, manifest_key
from inferq.core.artifacts.filesystem import FileStore
from inferq.core.artifacts.s3 import S3Store
from inferq.core.errors import ArtifactError
from inferq.core.settings import Settings
from tests.s3 import new_bucket
from workers.artifact_cache import ArtifactCache


@pytest.fixture(params=["file", "s3"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ArtifactStore:
    if request.param == "file":
        return FileStore(tmp_path / "store")
    endpoint = request.getfixturevalue("s3_endpoint")
    settings = Settings.of(s3_endpoint_url=endpoint, s3_region="us-east-1")
    return S3Store.from_uri(f"s3://{new_bucket(endpoint)}/models", settings.artifacts)


def model_dir(root: Path) -> Path:
    (root / "tokenizer").mkdir(parents=True)
    (root / "config.json").write_text('{"layers": 2}')
    (root / "tokenizer" / "vocab.txt").write_text("a\nb\n")
    noise = random.Random(7)  # the same tree every time
    (root / "model-00001.safetensors").write_bytes(noise.randbytes(1000))
    (root / "model-00002.safetensors").write_bytes(noise.randbytes(3000))
    return root


def test_a_file_is_stored_under_its_digest_once(store: ArtifactStore, tmp_path: Path) -> None:
    data = os.urandom(20_000)
    (tmp_path / "w.safetensors").write_bytes(data)
    first = store.ingest_path(tmp_path / "w.safetensors")
    again = store.ingest_path(tmp_path / "w.safetensors")
    assert first == again and first.kind == "file"
    assert first.sha256 == hashlib.sha256(data).hexdigest() and first.size == len(data)
    assert first.uri == store.uri_of(blob_key(first.sha256))
    assert store.read_bytes(blob_key(first.sha256)) == data


def test_a_directory_is_one_artifact_with_every_file(store: ArtifactStore, tmp_path: Path) -> None:
    artifact = store.ingest_path(model_dir(tmp_path / "m"))
    assert artifact.kind == "dir"
    assert [e.path for e in artifact.files] == [
        "config.json", "model-00001.safetensors", "model-00002.safetensors", "tokenizer/vocab.txt"
    ]  # fmt: skip
    assert artifact.size == sum(e.size for e in artifact.files) == 4000 + 13 + 4
    # its digest names the manifest; the same tree anywhere has the same digest
    assert store.size(manifest_key(artifact.sha256)) is not None
    assert store.ingest_path(model_dir(tmp_path / "copy")) == artifact
    assert store.artifact(artifact.sha256, "dir") == artifact


def test_an_object_the_store_holds_is_hashed_and_copied_to_its_address(
    store: ArtifactStore, tmp_path: Path
) -> None:
    """Catches: trusting a URI's name for the digest instead of reading the bytes."""
    data = os.urandom(5000)
    (tmp_path / "w.safetensors").write_bytes(data)
    store.put_file("uploads/team-a/model.safetensors", tmp_path / "w.safetensors")
    artifact = store.ingest_uri(store.uri_of("uploads/team-a/model.safetensors"))
    assert artifact.sha256 == hashlib.sha256(data).hexdigest()
    assert store.read_bytes(blob_key(artifact.sha256)) == data
    # a prefix is a directory
    for path in ("a.json", "sub/b.safetensors"):
        (tmp_path / "x").write_bytes(path.encode())
        store.put_file(f"uploads/dir/{path}", tmp_path / "x")
    tree = store.ingest_uri(store.uri_of("uploads/dir"))
    assert tree.kind == "dir" and [e.path for e in tree.files] == ["a.json", "sub/b.safetensors"]


@pytest.mark.parametrize(
    "uri",
    ["s3://elsewhere/models/x", "file:///etc/passwd", "{root}/../escape", "{root}/nothing-here"],
)
def test_a_uri_outside_the_store_or_holding_nothing_is_refused(
    store: ArtifactStore, uri: str
) -> None:
    with pytest.raises(ArtifactError):
        store.ingest_uri(uri.format(root=store.uri))


def test_links_in_a_directory_are_refused(tmp_path: Path) -> None:
    root = model_dir(tmp_path / "m")
    (root / "secret").symlink_to("/etc/hostname")
    with pytest.raises(ArtifactError, match="link"):
        FileStore(tmp_path / "store").ingest_path(root)


def cache_for(store: ArtifactStore, root: Path, max_bytes: int = 1 << 30) -> ArtifactCache:
    return ArtifactCache(store, root, max_bytes)


def test_a_worker_fetches_once_and_a_restarted_one_reuses_its_copy(
    store: ArtifactStore, tmp_path: Path
) -> None:
    artifact = store.ingest_path(model_dir(tmp_path / "m"))
    path, fetch_s = cache_for(store, tmp_path / "cache").fetch(artifact)
    assert fetch_s > 0 and (path / "tokenizer" / "vocab.txt").read_text() == "a\nb\n"
    # a new process (a new cache object) on the same directory downloads nothing
    again, fetch_again = cache_for(store, tmp_path / "cache").fetch(artifact)
    assert (again, fetch_again) == (path, 0.0)


def test_a_damaged_cached_copy_is_fetched_again(store: ArtifactStore, tmp_path: Path) -> None:
    """Catches: trusting the cache without checking the digest before load."""
    (tmp_path / "w").write_bytes(os.urandom(4096))
    artifact = store.ingest_path(tmp_path / "w")
    path, _ = cache_for(store, tmp_path / "cache").fetch(artifact)
    path.write_bytes(b"tampered")
    again, fetch_s = cache_for(store, tmp_path / "cache").fetch(artifact)
    assert fetch_s > 0 and hashlib.sha256(again.read_bytes()).hexdigest() == artifact.sha256


def test_a_cached_copy_with_one_byte_changed_and_the_same_size_is_fetched_again(
    store: ArtifactStore, tmp_path: Path
) -> None:
    """Catches: a cached copy checked by its size instead of its SHA-256 (one flipped byte
    keeps the size)."""
    (tmp_path / "w").write_bytes(os.urandom(4096))
    artifact = store.ingest_path(tmp_path / "w")
    path, _ = cache_for(store, tmp_path / "cache").fetch(artifact)
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    assert path.stat().st_size == artifact.size
    again, fetch_s = cache_for(store, tmp_path / "cache").fetch(artifact)
    assert fetch_s > 0 and hashlib.sha256(again.read_bytes()).hexdigest() == artifact.sha256


def test_a_blob_in_the_store_with_one_byte_changed_and_the_same_size_is_refused(
    store: ArtifactStore, tmp_path: Path
) -> None:
    """Catches: a download checked by its size instead of its SHA-256."""
    (tmp_path / "w").write_bytes(os.urandom(4096))
    artifact = store.ingest_path(tmp_path / "w")
    data = bytearray((tmp_path / "w").read_bytes())
    data[-1] ^= 0x01
    (tmp_path / "flipped").write_bytes(bytes(data))
    store.put_file(blob_key(artifact.sha256), tmp_path / "flipped")  # tampered in place
    with pytest.raises(ArtifactError, match=f"expected sha256 {artifact.sha256}"):
        cache_for(store, tmp_path / "cache").fetch(artifact)
    assert not list((tmp_path / "cache").glob("blobs/*"))  # nothing kept, not even half


def test_a_damaged_or_missing_blob_in_the_store_is_an_artifact_error(
    store: ArtifactStore, tmp_path: Path
) -> None:
    (tmp_path / "w").write_bytes(os.urandom(4096))
    artifact = store.ingest_path(tmp_path / "w")
    (tmp_path / "short").write_bytes(b"truncated")
    store.put_file(blob_key(artifact.sha256), tmp_path / "short")  # damaged in place
    with pytest.raises(ArtifactError, match="damaged"):
        cache_for(store, tmp_path / "cache").fetch(artifact)
    (tmp_path / "other").write_bytes(os.urandom(10))
    missing = store.ingest_path(tmp_path / "other")
    gone = type(missing)(
        missing.kind,
        "0" * 64,
        missing.size,
        (type(missing.files[0])("x", "0" * 64, 10),),
        store.uri_of(blob_key("0" * 64)),
    )
    with pytest.raises(ArtifactError):
        cache_for(store, tmp_path / "cache2").fetch(gone)
    assert not list((tmp_path / "cache").glob("blobs/.fetch-*"))  # nothing half-written is kept


def test_a_tree_another_worker_assembled_first_is_used(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Workers sharing one cache (compose's artifact-cache volume, `inferq up`'s workers) may
    assemble the same directory artifact at once; the one that comes second uses the first's.

    Catches: the second rename's error (the tree is there, not empty) failing the fetch."""
    import workers.artifact_cache as cache_module

    store = FileStore(tmp_path / "store")
    artifact = store.ingest_path(model_dir(tmp_path / "m"))
    other = cache_for(store, tmp_path / "cache")
    real = cache_module.tempfile.mkdtemp

    def meanwhile(**kwargs: object) -> str:  # the other worker finishes its tree right now
        monkeypatch.setattr(cache_module.tempfile, "mkdtemp", real)
        other.fetch(artifact)
        return real(**kwargs)  # type: ignore[arg-type]

    for entry in artifact.files:  # this worker has the blobs, not yet the tree
        cache_for(store, tmp_path / "cache")._ensure_blob(store, entry)
    monkeypatch.setattr(cache_module.tempfile, "mkdtemp", meanwhile)

    path, _ = cache_for(store, tmp_path / "cache").fetch(artifact)

    assert (path / "tokenizer" / "vocab.txt").read_text() == "a\nb\n"
    assert [p.name for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tree-")] == []


def test_the_cache_keeps_under_its_size_evicting_the_least_recently_used(tmp_path: Path) -> None:
    """Catches: a cache that grows without bound, or evicts what a worker serves."""
    store = FileStore(tmp_path / "store")
    made = []
    for i in range(3):
        (tmp_path / f"w{i}").write_bytes(os.urandom(1000))
        made.append(store.ingest_path(tmp_path / f"w{i}"))
    cache = cache_for(store, tmp_path / "cache", max_bytes=2500)
    first, _ = cache.fetch(made[0])
    cache.release(made[0])  # no longer served
    cache.fetch(made[1])
    cache.fetch(made[2])  # 3000 bytes > 2500: the least recent unpinned one goes
    assert not first.exists()
    assert sorted(
        p.name for p in (tmp_path / "cache" / "blobs").glob("[0-9a-f]*[0-9a-f]")
    ) == sorted(a.sha256 for a in made[1:])


def test_a_restarted_worker_rehashes_only_what_changed_since_it_was_verified(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: a warm restart that hashes every cached file again (a 2 GB model costs its
    load time twice over), or a stamp that survives a change to the file."""
    import workers.artifact_cache as cache_module

    store = FileStore(tmp_path / "store")
    (tmp_path / "w").write_bytes(os.urandom(4096))
    artifact = store.ingest_path(tmp_path / "w")
    path, _ = cache_for(store, tmp_path / "cache").fetch(artifact)
    hashed: list[Path] = []
    real = cache_module.hash_file
    monkeypatch.setattr(cache_module, "hash_file", lambda p: hashed.append(p) or real(p))
    cache_for(store, tmp_path / "cache").fetch(artifact)
    assert hashed == []  # verified when fetched, untouched since: loads at once
    path.write_bytes(path.read_bytes())  # the same bytes, rewritten: no longer the file verified
    cache_for(store, tmp_path / "cache").fetch(artifact)
    assert hashed == [path]
