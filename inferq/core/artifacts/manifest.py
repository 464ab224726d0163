"""What an artifact is: one file, or a directory of files, each addressed by its SHA-256.

A single-file artifact's digest is the file's own SHA-256 (what ``sha256sum`` prints); a
directory's digest is the SHA-256 of its manifest, the canonical JSON list of its files
(path, digest, size), so two identical directories have one digest wherever they come from.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path, PurePosixPath
from typing import Any

from inferq.core.errors import ArtifactError

CHUNK = 8 << 20  # reads of this size run hashlib at full speed


@dataclasses.dataclass(frozen=True)
class FileEntry:
    """One file of an artifact: its path inside the artifact, digest and size."""

    path: str
    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        """As stored in Postgres and in a manifest."""
        return {"path": self.path, "sha256": self.sha256, "size": self.size}


@dataclasses.dataclass(frozen=True)
class Artifact:
    """A stored artifact: ``kind`` is ``file`` or ``dir``."""

    kind: str
    sha256: str
    size: int
    files: tuple[FileEntry, ...]
    uri: str = ""

    def file_list(self) -> list[dict[str, Any]]:
        """The files, as stored in Postgres."""
        return [entry.to_dict() for entry in self.files]

    @classmethod
    def from_row(
        cls, kind: str, sha256: str, files: Sequence[Mapping[str, Any]], uri: str
    ) -> Artifact:
        """Rebuild what a version row describes."""
        entries = tuple(FileEntry(str(f["path"]), str(f["sha256"]), int(f["size"])) for f in files)
        return cls(kind, sha256, sum(e.size for e in entries), entries, uri)


def hash_file(path: Path) -> tuple[str, int]:
    """``(sha256, size)`` of a file, read in large chunks."""
    hasher, size = hashlib.sha256(), 0
    buffer = bytearray(CHUNK)
    view = memoryview(buffer)
    with path.open("rb", buffering=0) as file:
        while read := file.readinto(buffer):
            hasher.update(view[:read])
            size += read
    return hasher.hexdigest(), size


def manifest_bytes(files: Iterable[FileEntry]) -> bytes:
    """The canonical manifest of a directory artifact (its digest is this text's SHA-256)."""
    listed = sorted(files, key=lambda entry: entry.path)
    body = {"kind": "dir", "files": [entry.to_dict() for entry in listed]}
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def parse_manifest(data: bytes, sha256: str) -> tuple[FileEntry, ...]:
    """The files of a directory manifest, checked against its digest."""
    if hashlib.sha256(data).hexdigest() != sha256:
        raise ArtifactError(f"manifest digest mismatch for {sha256}")
    try:
        body = json.loads(data)
        return tuple(FileEntry(f["path"], f["sha256"], int(f["size"])) for f in body["files"])
    except (ValueError, KeyError, TypeError) as exc:
        raise ArtifactError(f"manifest {sha256} is malformed: {exc}") from exc


def safe_relative(path: str) -> str:
    """``path`` as a relative POSIX path inside an artifact; raises on ``..``, absolute
    paths and empty names (a tar or a listing must not write outside its directory)."""
    pure = PurePosixPath(path.replace("\\", "/"))
    if pure.is_absolute() or not pure.parts or any(p in ("..", "") for p in pure.parts):
        raise ArtifactError(f"artifact path {path[:200]!r} is not a plain relative path")
    return str(pure)


def directory_entries(root: Path) -> list[tuple[str, Path]]:
    """``(relative path, file)`` for every regular file under ``root``; links are refused."""
    found = []
    for path in sorted(root.rglob("*")):
        if path.is_symlink():
            raise ArtifactError(f"{path} is a symbolic link; artifacts hold plain files only")
        if path.is_file():
            found.append((safe_relative(path.relative_to(root).as_posix()), path))
    if not found:
        raise ArtifactError(f"{root} holds no files")
    return found
