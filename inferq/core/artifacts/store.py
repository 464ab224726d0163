"""The artifact store: content-addressed blobs (key = SHA-256) in a directory or a bucket.

Layout under the store's root, the same for every backend::

    blobs/sha256/<digest>              one file's bytes
    manifests/sha256/<digest>.json     a directory artifact's file list

Postgres keeps only what describes a version (URI, digest, size, files); workers fetch by
digest (:mod:`workers.artifact_cache`). A blob is written once and never changed, so any
number of versions, models and stores' readers can share it.
"""

from __future__ import annotations

import abc
import hashlib
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, BinaryIO

from inferq.core.artifacts.manifest import (
    CHUNK,
    Artifact,
    FileEntry,
    directory_entries,
    hash_file,
    manifest_bytes,
    parse_manifest,
    safe_relative,
)
from inferq.core.errors import ArtifactError, ConfigError

if TYPE_CHECKING:
    from inferq.core.settings import Settings


def blob_key(sha256: str) -> str:
    """Where a file's bytes live in the store."""
    return f"blobs/sha256/{sha256}"


def manifest_key(sha256: str) -> str:
    """Where a directory artifact's manifest lives in the store."""
    return f"manifests/sha256/{sha256}.json"


class ArtifactStore(abc.ABC):
    """A place that keeps blobs under keys (paths relative to its root ``uri``)."""

    uri: str

    @abc.abstractmethod
    def size(self, key: str) -> int | None:
        """The size of the object at ``key``, or None when there is none."""

    @abc.abstractmethod
    def put_file(self, key: str, path: Path) -> None:
        """Store ``path``'s bytes at ``key`` (atomically: readers never see half of it)."""

    @abc.abstractmethod
    def put_bytes(self, key: str, data: bytes) -> None:
        """Store ``data`` at ``key`` (small objects: manifests)."""

    @abc.abstractmethod
    def open(self, key: str) -> BinaryIO:
        """A stream of the object's bytes; raises ArtifactError when it is missing."""

    @abc.abstractmethod
    def copy(self, source: str, target: str) -> None:
        """Copy one object to another key inside the store (server-side where possible)."""

    @abc.abstractmethod
    def keys_under(self, prefix: str) -> list[str]:
        """The keys under ``prefix/`` (a "directory"), sorted."""

    def key_of(self, uri: str) -> str:
        """The key of ``uri`` in this store; raises when the URI is outside it."""
        root = self.uri.rstrip("/") + "/"
        if not uri.startswith(root) or len(uri) == len(root):
            raise ArtifactError(f"{uri[:300]} is outside the configured artifact store {self.uri}")
        return safe_relative(uri[len(root) :].rstrip("/"))

    def uri_of(self, key: str) -> str:
        """The URI of ``key`` in this store."""
        return f"{self.uri.rstrip('/')}/{key}"

    def read_bytes(self, key: str) -> bytes:
        """A small object's bytes."""
        with self.open(key) as stream:
            return stream.read()

    # -- registration ---------------------------------------------------------------

    def ingest_path(self, source: Path) -> Artifact:
        """Store a local file or directory (each file under its digest, a directory's
        manifest beside them) and describe it."""
        if source.is_symlink() or not source.exists():
            raise ArtifactError(f"{source} does not exist or is a link")
        if source.is_file():
            sha256, size = hash_file(source)
            self._put_blob(sha256, size, source)
            entry = FileEntry(source.name, sha256, size)
            return Artifact("file", sha256, size, (entry,), self.uri_of(blob_key(sha256)))
        entries = []
        for relative, path in directory_entries(source):
            sha256, size = hash_file(path)
            self._put_blob(sha256, size, path)
            entries.append(FileEntry(relative, sha256, size))
        return self._put_manifest(entries)

    def ingest_uri(self, uri: str) -> Artifact:
        """Describe an object (a file) or a prefix (a directory) the store already holds,
        copying each file to its content address: the digest is computed here, never
        trusted from a name."""
        key = self.key_of(uri)
        if key.startswith("manifests/sha256/") and key.endswith(".json"):
            return self.artifact(key.removeprefix("manifests/sha256/").removesuffix(".json"), "dir")
        if self.size(key) is not None:
            sha256, size = self._hash_object(key)
            entry = FileEntry(key.rsplit("/", 1)[-1], sha256, size)
            return Artifact("file", sha256, size, (entry,), self.uri_of(blob_key(sha256)))
        keys = self.keys_under(key)
        if not keys:
            raise ArtifactError(f"the artifact store holds nothing at {uri[:300]}")
        entries = []
        for child in keys:
            sha256, size = self._hash_object(child)
            entries.append(FileEntry(safe_relative(child[len(key) + 1 :]), sha256, size))
        return self._put_manifest(entries)

    def artifact(self, sha256: str, kind: str) -> Artifact:
        """The stored artifact with this digest; raises when the store does not hold it."""
        if kind == "file":
            size = self.size(blob_key(sha256))
            if size is None:
                raise ArtifactError(f"the artifact store has no blob {sha256}")
            entry = FileEntry(sha256, sha256, size)
            return Artifact("file", sha256, size, (entry,), self.uri_of(blob_key(sha256)))
        files = parse_manifest(self.read_bytes(manifest_key(sha256)), sha256)
        size = sum(entry.size for entry in files)
        return Artifact("dir", sha256, size, files, self.uri_of(manifest_key(sha256)))

    def ingest_stream(
        self, stream: IO[bytes], max_bytes: int, scratch: Path | None = None
    ) -> Artifact:
        """Store one file read from ``stream`` (an upload) without holding it in memory:
        spooled to a temporary file while hashed; ArtifactError past ``max_bytes``."""
        with tempfile.NamedTemporaryFile(dir=scratch, prefix="upload-", delete=True) as spool:
            hasher, size = hashlib.sha256(), 0
            while chunk := stream.read(1 << 20):
                size += len(chunk)
                if size > max_bytes:
                    raise ArtifactTooLarge(f"the artifact is larger than {max_bytes} bytes")
                hasher.update(chunk)
                spool.write(chunk)
            spool.flush()
            sha256 = hasher.hexdigest()
            self._put_blob(sha256, size, Path(spool.name))
        entry = FileEntry("upload", sha256, size)
        return Artifact("file", sha256, size, (entry,), self.uri_of(blob_key(sha256)))

    def _put_blob(self, sha256: str, size: int, path: Path) -> None:
        if self.size(blob_key(sha256)) != size:  # content-addressed: present means done
            self.put_file(blob_key(sha256), path)

    def _put_manifest(self, entries: list[FileEntry]) -> Artifact:
        data = manifest_bytes(entries)
        sha256 = hashlib.sha256(data).hexdigest()
        if self.size(manifest_key(sha256)) is None:
            self.put_bytes(manifest_key(sha256), data)
        files = tuple(sorted(entries, key=lambda e: e.path))
        size = sum(entry.size for entry in files)
        return Artifact("dir", sha256, size, files, self.uri_of(manifest_key(sha256)))

    def _hash_object(self, key: str) -> tuple[str, int]:
        hasher, size = hashlib.sha256(), 0
        with self.open(key) as stream:
            while chunk := stream.read(CHUNK):
                hasher.update(chunk)
                size += len(chunk)
        sha256 = hasher.hexdigest()
        if self.size(blob_key(sha256)) != size:
            self.copy(key, blob_key(sha256))
        return sha256, size

    def chunks(self, key: str) -> Iterator[bytes]:
        """The object's bytes in large chunks (a download)."""
        with self.open(key) as stream:
            while chunk := stream.read(CHUNK):
                yield chunk


class ArtifactTooLarge(ArtifactError):
    """Raised when an upload passes the configured artifact size limit."""


def open_store(settings: Settings) -> ArtifactStore:
    """The store ``INFERQ_ARTIFACT_STORE`` names: ``file:///dir`` (or a plain path) or
    ``s3://bucket/prefix``; unset, ``<INFERQ_HOME>/artifacts``."""
    uri = settings.artifacts.artifact_store or str(Path(settings.home).resolve() / "artifacts")
    return open_store_at(uri, settings)


def open_store_at(uri: str, settings: Settings) -> ArtifactStore:
    """The store rooted at ``uri`` (S3 credentials and endpoint from ``settings``)."""
    if uri.startswith("s3://"):
        from inferq.core.artifacts.s3 import S3Store

        return S3Store.from_uri(uri, settings.artifacts)
    if uri.startswith("file://"):
        uri = uri.removeprefix("file://")
    elif "://" in uri:
        raise ConfigError(f"INFERQ_ARTIFACT_STORE: {uri!r} is neither file:// nor s3://")
    from inferq.core.artifacts.filesystem import FileStore

    return FileStore(Path(uri))


def root_of(uri: str) -> str:
    """The store an artifact URI lives in: the part before its ``blobs/`` or ``manifests/``."""
    for marker in ("/blobs/sha256/", "/manifests/sha256/"):
        if marker in uri:
            return uri[: uri.rindex(marker)]
    raise ArtifactError(f"{uri[:300]} is not an artifact URI of inferq's store layout")
