"""A worker's local copy of the artifacts it serves: fetched once, verified, reused.

Each file is streamed from the store into ``<cache>/blobs/<sha256>`` through a temporary
file, hashed on the way, and renamed into place only when its SHA-256 matches; a stamp beside
it records the file's size, inode and modification time at that moment. A directory artifact
is assembled from its blobs (hard links) under ``<cache>/trees/<sha256>/``. A restarted
worker finds its files there: one whose stamp still matches was verified and has not been
touched since, and loads at once; any other is hashed again (and fetched again when it does
not match). The cache holds at most ``max_bytes``: the least recently used blobs not in use
go first.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from inferq.core.artifacts import Artifact, ArtifactStore, FileEntry, blob_key, hash_file
from inferq.core.artifacts.store import root_of
from inferq.core.errors import ArtifactError

log = logging.getLogger(__name__)


class ArtifactCache:
    """Local copies of artifacts, by digest, bounded in size."""

    def __init__(
        self,
        store: ArtifactStore,
        root: Path,
        max_bytes: int,
        open_root: Callable[[str], ArtifactStore] | None = None,
    ) -> None:
        self.store, self.root, self.max_bytes = store, root, max_bytes
        self._lock = threading.Lock()
        self._pinned: set[str] = set()
        #: Stores by root URI: a version is fetched from the store its URI names (it may
        #: predate a change of INFERQ_ARTIFACT_STORE), opened with ``open_root``.
        self._stores = {store.uri: store}
        self._open_root = open_root

    def fetch(self, artifact: Artifact) -> tuple[Path, float]:
        """The local path of ``artifact`` (a file, or a directory of its files), verified,
        and the seconds spent downloading (0 when every file was already here)."""
        with self._lock:
            started, downloaded = time.perf_counter(), False
            source = self._store_of(artifact)
            for entry in artifact.files:
                downloaded |= self._ensure_blob(source, entry)
            self._pinned.update(entry.sha256 for entry in artifact.files)
            path = self._blob(artifact.sha256) if artifact.kind == "file" else self._tree(artifact)
            self._evict(keep=self._pinned)
        return path, (time.perf_counter() - started) if downloaded else 0.0

    def release(self, artifact: Artifact) -> None:
        """The artifact is no longer served here: its files may be evicted."""
        with self._lock:
            self._pinned.difference_update(entry.sha256 for entry in artifact.files)

    def _blob(self, sha256: str) -> Path:
        return self.root / "blobs" / sha256

    def _store_of(self, artifact: Artifact) -> ArtifactStore:
        root = root_of(artifact.uri) if artifact.uri else self.store.uri
        if root not in self._stores:
            if self._open_root is None:
                raise ArtifactError(f"{artifact.uri} is not in the artifact store {self.store.uri}")
            self._stores[root] = self._open_root(root)
        return self._stores[root]

    def _ensure_blob(self, source: ArtifactStore, entry: FileEntry) -> bool:
        """Make sure the blob is here and whole; True when it had to be downloaded."""
        path = self._blob(entry.sha256)
        if path.is_file():
            if _stamp_matches(path) or hash_file(path) == (entry.sha256, entry.size):
                _touch(path)
                return False
            log.warning(
                "cached artifact file is damaged; fetching it again", extra={"sha256": entry.sha256}
            )
            path.unlink(missing_ok=True)
        self._download(source, entry, path)
        return True

    def _download(self, source: ArtifactStore, entry: FileEntry, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._make_room(entry.size)
        fd, name = tempfile.mkstemp(dir=path.parent, prefix=".fetch-")
        hasher, size = hashlib.sha256(), 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in source.chunks(blob_key(entry.sha256)):
                    hasher.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            if (hasher.hexdigest(), size) != (entry.sha256, entry.size):
                raise ArtifactError(
                    f"artifact file {entry.path} in the store is damaged: expected sha256 "
                    f"{entry.sha256} ({entry.size} bytes), got {hasher.hexdigest()} ({size} bytes)"
                )
            os.replace(name, path)
            _touch(path)
        finally:
            Path(name).unlink(missing_ok=True)

    def _tree(self, artifact: Artifact) -> Path:
        tree = self.root / "trees" / artifact.sha256
        if tree.is_dir():
            os.utime(tree)
            return tree
        staging = Path(tempfile.mkdtemp(dir=self.root, prefix=".tree-"))
        try:
            for entry in artifact.files:
                target = staging / entry.path
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(self._blob(entry.sha256), target)
                except OSError:  # a filesystem without hard links
                    shutil.copyfile(self._blob(entry.sha256), target)
            tree.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.replace(staging, tree)
            except OSError:
                if not tree.is_dir():
                    raise
                # another worker sharing this cache assembled the same tree first
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        return tree

    def _make_room(self, incoming: int) -> None:
        self._evict(keep=self._pinned, extra=incoming)

    def _evict(self, keep: Iterable[str], extra: int = 0) -> None:
        """Delete the least recently used unpinned blobs (and trees holding them) until the
        cache, plus ``extra`` bytes to come, fits in ``max_bytes``."""
        blobs = self.root / "blobs"
        if not blobs.is_dir():
            return
        kept = set(keep)
        files = sorted(
            (p.stat().st_mtime, p) for p in blobs.iterdir() if p.is_file() and p.suffix != ".ok"
        )
        total = sum(p.stat().st_size for _, p in files) + extra
        for _, path in files:
            if total <= self.max_bytes:
                break
            if path.name in kept:
                continue
            total -= path.stat().st_size
            path.unlink(missing_ok=True)
            _stamp_of(path).unlink(missing_ok=True)
            self._drop_trees_with(path.name)
            log.info("evicted a cached artifact file", extra={"sha256": path.name})

    def _drop_trees_with(self, sha256: str) -> None:
        trees = self.root / "trees"
        if not trees.is_dir():
            return
        for tree in trees.iterdir():
            if any(f.is_file() and f.stat().st_nlink == 1 for f in tree.rglob("*")):
                shutil.rmtree(tree, ignore_errors=True)  # one of its links was the evicted blob


def _stamp_of(path: Path) -> Path:
    return path.with_name(path.name + ".ok")


def _fingerprint(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size} {stat.st_ino} {stat.st_mtime_ns}"


def _touch(path: Path) -> None:
    """Mark a verified blob as recently used, and stamp what it looks like now."""
    os.utime(path)
    _stamp_of(path).write_text(_fingerprint(path))


def _stamp_matches(path: Path) -> bool:
    """Whether ``path`` is as it was when last verified (no write since, same file)."""
    try:
        return _stamp_of(path).read_text() == _fingerprint(path)
    except OSError:
        return False
