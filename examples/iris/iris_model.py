"""The iris classifier as inferq serves it: the network, and the handler around it.

Registered with ``inferq models add iris --handler examples.iris.iris_model:IrisHandler``;
the weights are the state_dict ``train.py`` saves (safetensors).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn

from inferq import ModelHandler

SPECIES = ("setosa", "versicolor", "virginica")


class IrisNet(nn.Module):
    """Four measurements (cm) in, three species scores out."""

    def __init__(self, hidden: int = 16) -> None:
        super().__init__()
        self.layers = nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


class IrisHandler(ModelHandler):
    """Input: the four measurements; output: the species and each one's probability."""

    name = "iris"
    input_schema = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "type": "object",
        "additionalProperties": False,
        "required": ["sepal_length", "sepal_width", "petal_length", "petal_width"],
        "properties": {
            key: {"type": "number", "minimum": 0, "maximum": 100}
            for key in ("sepal_length", "sepal_width", "petal_length", "petal_width")
        },
        "examples": [
            {"sepal_length": 6.7, "sepal_width": 3.0, "petal_length": 5.2, "petal_width": 2.3}
        ],
    }
    label_schema = {"enum": list(SPECIES)}
    default_config = {"max_batch_size": 64, "hidden": 16}

    def build(self) -> nn.Module:
        return IrisNet(int(self.config["hidden"]))

    def prepare(self, item: Mapping[str, Any]) -> list[float]:
        return [
            float(item[key])
            for key in ("sepal_length", "sepal_width", "petal_length", "petal_width")
        ]

    def predict(self, batch: Sequence[list[float]]) -> list[dict[str, Any]]:
        with self.inference():
            scores = self.module(torch.tensor(batch, device=self.device)).softmax(-1).cpu()
        return [
            {
                "species": SPECIES[int(row.argmax())],
                "probabilities": dict(zip(SPECIES, (round(float(p), 4) for p in row), strict=True)),
            }
            for row in scores
        ]
