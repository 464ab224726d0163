"""A handler that takes any weights: what a size test registers (a big artifact whose
tensors no handler spec constrains). It predicts the number of tensors it loaded."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

from inferq import ModelHandler


class OpaqueHandler(ModelHandler):
    """Any safetensors weights; each output says how many tensors were loaded."""

    name = "opaque"
    input_schema = {"type": "object"}

    def load(self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
        # Copied into memory of its own, as load_state_dict copies into a module's
        # parameters: safetensors hands out memory-mapped tensors that cost nothing until read.
        self.weights = {name: tensor.clone() for name, tensor in tensors.items()}
        self.count = len(tensors)

    def predict(self, batch: Sequence[Any]) -> list[dict[str, Any]]:
        return [{"tensors": self.count} for _ in batch]


def write_weights(path: Any, size_bytes: int, chunk: int = 64 << 20) -> None:
    """A valid safetensors file of about ``size_bytes``: one float32 tensor, its bytes
    written in chunks (never held whole in memory)."""
    import json
    import os

    count = size_bytes // 4
    header = json.dumps(
        {"big": {"dtype": "F32", "shape": [count], "data_offsets": [0, count * 4]}}
    ).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as out:
        out.write(len(header).to_bytes(8, "little") + header)
        left = count * 4
        while left:
            step = min(chunk, left)
            out.write(os.urandom(step))
            left -= step
