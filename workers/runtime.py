"""The model runtime: each version's weights are fetched, verified and loaded once per worker
process, and kept.

A version whose artifact cannot be fetched or loaded (missing, damaged, weights that do not
fit) fails its jobs with a clear error; the worker goes on serving every other version, and
tries the broken one again only after ``RETRY_FAILED_S``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

import torch
from sqlalchemy.orm import Session, sessionmaker

from db.registry import LoadableVersion, loadable_version
from inferq.core.artifacts import Artifact
from inferq.core.errors import ArtifactError, ModelError
from inferq.core.handlers import ModelHandler, handler_class
from workers.artifact_cache import ArtifactCache

log = logging.getLogger(__name__)

#: How long a version that failed to load is refused before it is tried again.
RETRY_FAILED_S = 30.0


class ModelRuntime:
    """Loads model versions on first use and caches the ready handlers."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        device: torch.device,
        cache: ArtifactCache,
        on_load: Callable[[str, float, float], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self.device = device
        self.cache = cache
        self._handlers: dict[int, ModelHandler] = {}
        self._digests: dict[int, str] = {}
        self._names: dict[int, str] = {}
        self._failed: dict[int, tuple[float, ArtifactError]] = {}
        self._lock = threading.Lock()
        #: called with (model name, fetch seconds, load seconds) after each load: metrics
        self._on_load = on_load

    def handler(self, version_id: int) -> ModelHandler:
        """The loaded handler serving ``version_id``; ArtifactError when it cannot load."""
        handler = self._handlers.get(version_id)
        if handler is None:
            with self._lock:
                handler = self._handlers.get(version_id) or self._load_once(version_id)
                self._handlers[version_id] = handler
        return handler

    def digest(self, version_id: int) -> str | None:
        """The SHA-256 of a loaded version's artifact (the result cache is keyed by it)."""
        return self._digests.get(version_id)

    def model_name(self, version_id: int) -> str | None:
        """The name of the model a loaded version belongs to."""
        return self._names.get(version_id)

    def local_artifact(self, version_id: int) -> tuple[LoadableVersion, Path]:
        """A version's row and its artifact's local (verified) path, for training."""
        version = self._row(version_id)
        path, _ = self.cache.fetch(artifact_of(version))
        return version, path

    def _load_once(self, version_id: int) -> ModelHandler:
        failed = self._failed.get(version_id)
        if failed is not None and time.monotonic() - failed[0] < RETRY_FAILED_S:
            raise failed[1]
        try:
            return self._load(version_id)
        except ArtifactError as exc:
            self._failed[version_id] = (time.monotonic(), exc)
            raise
        except ModelError as exc:  # an unknown handler, a handler that cannot load: the same
            error = ArtifactError(str(exc))
            self._failed[version_id] = (time.monotonic(), error)
            raise error from exc

    def _row(self, version_id: int) -> LoadableVersion:
        with self._sessions() as session:
            version = loadable_version(session, version_id)
        if version is None:
            raise ArtifactError(f"model version {version_id} does not exist")
        return version

    def _load(self, version_id: int) -> ModelHandler:
        version = self._row(version_id)
        artifact = artifact_of(version)
        path, fetch_s = self.cache.fetch(artifact)
        started = time.perf_counter()
        handler = handler_class(version.handler)(self.device, version.config)
        try:
            handler.load_artifact(path)
        except (ArtifactError, ModelError):
            raise
        except Exception as exc:  # a handler's own failure: that version fails, not the worker
            what = f"{version.model_name} v{version.version}"
            raise ArtifactError(f"{what} failed to load: {type(exc).__name__}: {exc}") from exc
        load_s = time.perf_counter() - started
        self._digests[version_id] = version.sha256
        self._names[version_id] = version.model_name
        self._failed.pop(version_id, None)
        log.info(
            "loaded model version",
            extra={
                "model": version.model_name,
                "version": version.version,
                "device": str(self.device),
                "bytes": artifact.size,
                "fetch_ms": round(fetch_s * 1000, 1),
                "load_ms": round(load_s * 1000, 1),
            },
        )
        if self._on_load is not None:
            self._on_load(version.model_name, fetch_s, load_s)
        return handler


def artifact_of(version: LoadableVersion) -> Artifact:
    """The artifact a version row describes."""
    return Artifact.from_row(
        version.artifact_kind, version.sha256, version.files, version.artifact_uri
    )
