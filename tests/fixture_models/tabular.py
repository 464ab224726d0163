"""A model as a user writes one: an ``nn.Module``, a handler that builds it, weights saved
with safetensors. Served as ``tests.fixture_models.tabular:TabularHandler``."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from inferq import ModelHandler

FEATURES, CLASSES = 4, 3


class TabularNet(nn.Module):
    """Four numbers in, three class scores out."""

    def __init__(self, hidden: int = 8) -> None:
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(FEATURES, hidden), nn.ReLU(), nn.Linear(hidden, CLASSES)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class TabularHandler(ModelHandler):
    """Serves TabularNet; ``hidden`` in the model's config sets its width."""

    name = "tabular"
    input_schema = {
        "type": "object",
        "additionalProperties": False,
        "required": ["features"],
        "properties": {
            "features": {
                "type": "array",
                "items": {"type": "number"},
                "minItems": FEATURES,
                "maxItems": FEATURES,
            }
        },
    }
    default_config = {"max_batch_size": 16, "hidden": 8}

    def build(self) -> nn.Module:
        return TabularNet(int(self.config["hidden"]))

    def prepare(self, item: Mapping[str, Any]) -> list[float]:
        return [float(x) for x in item["features"]]

    def predict(self, batch: Sequence[list[float]]) -> list[dict[str, Any]]:
        with self.inference():
            scores = self.module(torch.tensor(batch, device=self.device)).softmax(-1).cpu()
        return [
            {"label": int(row.argmax()), "probabilities": [round(float(p), 6) for p in row]}
            for row in scores
        ]


class BatchDependentHandler(TabularHandler):
    """Answers differently in a batch than alone: what ``inferq models check`` must catch."""

    def predict(self, batch: Sequence[list[float]]) -> list[dict[str, Any]]:
        outputs = super().predict(batch)
        return [{**out, "label": (out["label"] + len(batch) - 1) % CLASSES} for out in outputs]


class TensorOutputHandler(TabularHandler):
    """Returns tensors, which are not JSON."""

    def predict(self, batch: Sequence[list[float]]) -> list[Any]:
        with self.inference():
            return list(self.module(torch.tensor(batch)))


class LargeBatchFailsHandler(TabularHandler):
    """Fine up to a batch of 4, then raises, as a model out of device memory would."""

    def predict(self, batch: Sequence[list[float]]) -> list[dict[str, Any]]:
        if len(batch) > 4:
            raise RuntimeError(f"out of memory at a batch of {len(batch)}")
        return super().predict(batch)


class LargeBatchDropsHandler(TabularHandler):
    """Answers at most 4 outputs, however large the batch."""

    def predict(self, batch: Sequence[list[float]]) -> list[dict[str, Any]]:
        return super().predict(batch)[:4]


def weights(hidden: int = 8, seed: int = 0) -> dict[str, torch.Tensor]:
    """A state_dict of TabularNet, as a user's training would leave one."""
    torch.manual_seed(seed)
    return {k: v.detach().clone() for k, v in TabularNet(hidden).state_dict().items()}


EXAMPLES = [{"features": [5.1, 3.5, 1.4, 0.2]}, {"features": [6.7, 3.0, 5.2, 2.3]}]
