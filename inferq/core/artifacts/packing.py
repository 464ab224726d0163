"""Weights as safetensors bytes: what training writes, and reading them back (tests, tools).

Nothing is ever unpickled: safetensors holds raw tensors and a string-to-string header.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from inferq.core.errors import ArtifactError

if TYPE_CHECKING:
    import torch


def digest(data: bytes) -> str:
    """Hex SHA-256 of an artifact."""
    return hashlib.sha256(data).hexdigest()


def pack(tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> tuple[bytes, str]:
    """Serialise weights to safetensors bytes; returns the bytes and their SHA-256. The same
    tensors and metadata give the same bytes, and so the same digest, in every process."""
    from safetensors.torch import save

    data = save({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, dict(metadata))
    data = canonical(data)
    return data, digest(data)


def canonical(data: bytes) -> bytes:
    """``data`` (safetensors) with its JSON header's keys sorted. safetensors writes the
    metadata in hash-map order, which changes from one process to the next: seed-0 weights
    trained in two homes would otherwise get two digests. Offsets in the header count from
    the end of the header, so rewriting it moves nothing."""
    size = int.from_bytes(data[:8], "little")
    header = json.loads(data[8 : 8 + size])
    text = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # safetensors keeps the data 8-byte aligned
    return len(text).to_bytes(8, "little") + text + data[8 + size :]


def unpack(data: bytes, sha256: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Check the digest, then load tensors and header metadata from safetensors bytes."""
    from safetensors.torch import load

    actual = digest(data)
    if actual != sha256:
        raise ArtifactError(f"artifact digest mismatch: expected {sha256}, got {actual}")
    try:
        tensors = load(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
    except Exception as exc:  # safetensors raises its own untyped errors
        raise ArtifactError(f"artifact is not valid safetensors: {exc}") from exc
    return tensors, dict(header.get("__metadata__") or {})


def read_tensors(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata from a local artifact: one safetensors file, or every
    ``*.safetensors`` file (shard) of a directory merged."""
    from safetensors import safe_open
    from safetensors.torch import load_file

    files = [path] if path.is_file() else sorted(path.rglob("*.safetensors"))
    if not files:
        raise ArtifactError(f"{path} holds no .safetensors file")
    tensors: dict[str, torch.Tensor] = {}
    metadata: dict[str, str] = {}
    for file in files:
        try:
            with safe_open(str(file), framework="pt") as opened:
                metadata.update(opened.metadata() or {})
            tensors.update(load_file(str(file), device="cpu"))
        except Exception as exc:  # safetensors raises its own untyped errors
            raise ArtifactError(f"{file.name} is not valid safetensors: {exc}") from exc
    return tensors, metadata
