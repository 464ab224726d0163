"""What needs torch when registering: describing a handler, writing trained weights.

Used by the CLI, ``inferq up`` (through the CLI) and training workers; the API never imports
this module (it asks ``inferq models describe`` in a child process instead).
"""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from inferq.core.artifacts.manifest import Artifact
from inferq.core.artifacts.packing import pack
from inferq.core.artifacts.store import ArtifactStore
from inferq.core.errors import ModelError
from inferq.domain.registration import HandlerDescription

if TYPE_CHECKING:
    import torch


def describe(handler: str, config: Mapping[str, Any] | None = None) -> HandlerDescription:
    """Import ``handler`` (an entry point name or ``module:Class``) and describe it."""
    from inferq.core.handlers import handler_class

    cls = handler_class(handler)  # an unknown handler fails here, before torch is imported
    import torch

    instance = cls(torch.device("cpu"), dict(config or {}))
    try:
        spec = instance.expected_tensors()
    except Exception as exc:  # a build() that cannot run on the meta device: no spec
        raise ModelError(f"{handler}: build() failed: {type(exc).__name__}: {exc}") from exc
    return HandlerDescription(
        handler,
        dict(cls.input_schema),
        dict(cls.label_schema) if cls.label_schema is not None else None,
        dict(cls.default_config),
        spec,
    )


def store_tensors(
    store: ArtifactStore, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]
) -> Artifact:
    """Write trained weights to the store as one safetensors file (the same bytes for the
    same weights, see :func:`inferq.core.artifacts.pack`)."""
    with tempfile.TemporaryDirectory(prefix="inferq-weights-") as folder:
        path = Path(folder) / "model.safetensors"
        path.write_bytes(pack(tensors, metadata)[0])
        return store.ingest_path(path)
