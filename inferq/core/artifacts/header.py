"""A safetensors file's header, read without torch: the tensors' names, dtypes and shapes.

The API checks an upload with it (it never imports torch), the CLI before registering, and
workers never need it (they load the file). A file that is not safetensors, or is cut short
(its last tensor ends past the file's end), is refused with :class:`ArtifactError`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

from inferq.core.errors import ArtifactError

#: safetensors caps its header at 100 MB; a larger claim means the file is something else.
MAX_HEADER = 100 << 20
DTYPE_BYTES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1, "I16": 2, "U16": 2, "F16": 2,
    "BF16": 2, "I32": 4, "U32": 4, "F32": 4, "I64": 8, "U64": 8, "F64": 8,
}  # fmt: skip

#: name -> {"dtype": str, "shape": [int, ...]}
TensorSpec = dict[str, dict[str, Any]]


def read_header(
    file: BinaryIO, size: int, name: str = "artifact"
) -> tuple[TensorSpec, dict[str, str]]:
    """The tensors and metadata of a safetensors file of ``size`` bytes open at offset 0."""
    raw = file.read(8)
    if len(raw) < 8:
        raise ArtifactError(f"{name} is not safetensors: shorter than its 8-byte header length")
    (length,) = struct.unpack("<Q", raw)
    if length > MAX_HEADER or 8 + length > size:
        raise ArtifactError(f"{name} is not safetensors: impossible header length {length}")
    try:
        header = json.loads(file.read(length))
    except ValueError as exc:
        raise ArtifactError(f"{name} is not safetensors: its header is not JSON") from exc
    if not isinstance(header, dict):
        raise ArtifactError(f"{name} is not safetensors: its header is not an object")
    metadata = header.pop("__metadata__", None) or {}
    tensors: TensorSpec = {}
    end = 0
    for tensor, info in header.items():
        try:
            dtype, shape, (start, stop) = info["dtype"], list(info["shape"]), info["data_offsets"]
            count = 1
            for dim in shape:
                count *= int(dim)
            if stop - start != count * DTYPE_BYTES[dtype] or start < 0:
                raise ValueError("offsets do not match dtype and shape")
        except (KeyError, TypeError, ValueError) as exc:
            raise ArtifactError(f"{name} is not safetensors: tensor {tensor!r}: {exc}") from exc
        tensors[tensor] = {"dtype": dtype, "shape": [int(d) for d in shape]}
        end = max(end, stop)
    if 8 + length + end > size:
        raise ArtifactError(
            f"{name} is truncated: its tensors need {8 + length + end} bytes, it has {size}"
        )
    return tensors, {str(k): str(v) for k, v in metadata.items()}


def read_header_of(path: Path) -> tuple[TensorSpec, dict[str, str]]:
    """:func:`read_header` of a file on disk."""
    with path.open("rb") as file:
        return read_header(file, path.stat().st_size, path.name)


def mismatches(
    found: Mapping[str, Mapping[str, Any]], expected: Mapping[str, Mapping[str, Any]]
) -> list[str]:
    """How the tensors ``found`` differ from those a handler ``expected`` (names and shapes;
    empty when they fit)."""
    problems = [f"missing tensor {name!r}" for name in sorted(set(expected) - set(found))]
    problems += [f"unexpected tensor {name!r}" for name in sorted(set(found) - set(expected))]
    for name in sorted(set(found) & set(expected)):
        if list(found[name]["shape"]) != list(expected[name]["shape"]):
            problems.append(
                f"tensor {name!r} has shape {list(found[name]['shape'])}, "
                f"the model wants {list(expected[name]['shape'])}"
            )
    return problems
