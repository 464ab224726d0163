"""The artifact store on a filesystem: a directory on this host or a shared volume."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import BinaryIO

from inferq.core.artifacts.store import ArtifactStore
from inferq.core.errors import ArtifactError


class FileStore(ArtifactStore):
    """Blobs as files under ``root``; writes go to a temporary file renamed into place."""

    def __init__(self, root: Path) -> None:
        self.root = root.resolve()
        self.uri = f"file://{self.root}"

    def _path(self, key: str) -> Path:
        return self.root / key

    def size(self, key: str) -> int | None:
        path = self._path(key)
        return path.stat().st_size if path.is_file() else None

    def put_file(self, key: str, path: Path) -> None:
        with self._writer(key) as target, path.open("rb") as source:
            shutil.copyfileobj(source, target, 8 << 20)

    def put_bytes(self, key: str, data: bytes) -> None:
        with self._writer(key) as target:
            target.write(data)

    def open(self, key: str) -> BinaryIO:
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise ArtifactError(f"the artifact store has nothing at {self.uri_of(key)}") from None

    def copy(self, source: str, target: str) -> None:
        self.put_file(target, self._path(source))

    def keys_under(self, prefix: str) -> list[str]:
        base = self._path(prefix)
        if not base.is_dir():
            return []
        return sorted(
            path.relative_to(self.root).as_posix()
            for path in base.rglob("*")
            if path.is_file() and not path.is_symlink()
        )

    def _writer(self, key: str) -> _AtomicFile:
        return _AtomicFile(self._path(key))


class _AtomicFile:
    """A file written beside its destination and renamed into place on success."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __enter__(self) -> BinaryIO:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(dir=self.path.parent, prefix=".incoming-")
        self._temp = Path(name)
        self._file: BinaryIO = os.fdopen(fd, "wb")
        return self._file

    def __exit__(self, kind: object, *_: object) -> None:
        self._file.close()
        if kind is None:
            os.replace(self._temp, self.path)
        else:
            self._temp.unlink(missing_ok=True)
