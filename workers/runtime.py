"""The model runtime: each version's weights are loaded once per worker process and kept."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

import torch
from sqlalchemy.orm import Session, sessionmaker

from db.registry import loadable_version
from inferq.core.artifacts import unpack
from inferq.core.errors import ArtifactError
from inferq.core.handlers import ModelHandler, handler_class

log = logging.getLogger(__name__)


class ModelRuntime:
    """Loads model versions on first use and caches the ready handlers."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        device: torch.device,
        on_load: Callable[[str, float], None] | None = None,
    ) -> None:
        self._sessions = sessions
        self.device = device
        self._handlers: dict[int, ModelHandler] = {}
        self._digests: dict[int, str] = {}
        self._names: dict[int, str] = {}
        self._lock = threading.Lock()
        #: called with (model name, seconds) after each load: the worker's metrics
        self._on_load = on_load

    def handler(self, version_id: int) -> ModelHandler:
        """The loaded handler serving ``version_id``."""
        handler = self._handlers.get(version_id)
        if handler is None:
            with self._lock:
                handler = self._handlers.get(version_id) or self._load(version_id)
                self._handlers[version_id] = handler
        return handler

    def digest(self, version_id: int) -> str | None:
        """The SHA-256 of a loaded version's artifact (the result cache is keyed by it)."""
        return self._digests.get(version_id)

    def model_name(self, version_id: int) -> str | None:
        """The name of the model a loaded version belongs to."""
        return self._names.get(version_id)

    def _load(self, version_id: int) -> ModelHandler:
        started = time.perf_counter()
        with self._sessions() as session:
            version = loadable_version(session, version_id)
        if version is None:
            raise ArtifactError(f"model version {version_id} does not exist")
        tensors, metadata = unpack(version.artifact, version.sha256)
        self._digests[version_id] = version.sha256
        handler = handler_class(version.handler)(self.device, version.config)
        handler.load(tensors, metadata)
        self._names[version_id] = version.model_name
        seconds = time.perf_counter() - started
        log.info(
            "loaded model version",
            extra={
                "model": version.model_name,
                "version": version.version,
                "device": str(self.device),
                "load_ms": round(seconds * 1000, 1),
            },
        )
        if self._on_load is not None:
            self._on_load(version.model_name, seconds)
        return handler
