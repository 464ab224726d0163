"""``digits``: a small CNN on 8x8 grey digits, trained from scikit-learn's bundled data.

Input ``{"pixels": [64 numbers 0..16, row-major]}`` or ``{"image": "<base64 PNG or JPEG>"}``
(any size, turned into 8x8 grey); output ``{"label": 0..9, "probabilities": [10 numbers]}``.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
import io
import json
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from inferq import Example, InputError, ModelHandler, TrainedModel

HOLDOUT_FRACTION = 0.2
#: Decoded images larger than this are refused before decoding (decompression bombs).
MAX_IMAGE_PIXELS = 4096 * 4096
MAX_IMAGE_B64 = 2_000_000

#: The first of scikit-learn's digits (a 0): ``inferq submit --model digits --example``.
EXAMPLE_PIXELS = [
    *(0, 0, 5, 13, 9, 1, 0, 0, 0, 0, 13, 15, 10, 15, 5, 0, 0, 3, 15, 2, 0, 11, 8, 0),
    *(0, 4, 12, 0, 0, 8, 8, 0, 0, 5, 8, 0, 0, 9, 8, 0, 0, 4, 11, 0, 1, 12, 7, 0),
    *(0, 2, 14, 5, 10, 12, 0, 0, 0, 0, 6, 13, 10, 0, 0, 0),
]

INPUT_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    # JSON Schema's own place for sample values; stored with the model, so clients (and
    # `inferq submit --example`) read it from GET /v1/models without the handler.
    "examples": [{"pixels": EXAMPLE_PIXELS}],
    "type": "object",
    "additionalProperties": False,
    "minProperties": 1,
    "maxProperties": 1,
    "properties": {
        "pixels": {
            "type": "array",
            "minItems": 64,
            "maxItems": 64,
            "items": {"type": "number", "minimum": 0, "maximum": 16},
        },
        "image": {"type": "string", "format": "image-base64", "maxLength": MAX_IMAGE_B64},
    },
}


class DigitsNet(nn.Module):
    """Two 3x3 convolutions, a 2x2 pool and two dense layers: about 25k parameters."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 16, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(32 * 4 * 4, 64), nn.ReLU(), nn.Linear(64, 10)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


@dataclasses.dataclass(frozen=True)
class Split:
    """A seeded train/holdout split of scikit-learn's digits (pixels 0..16, labels 0..9)."""

    train_x: np.ndarray
    train_y: np.ndarray
    holdout_x: np.ndarray
    holdout_y: np.ndarray


def dataset(seed: int = 0) -> Split:
    """The same split for the same seed, so holdout accuracy is comparable across versions."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    order = np.random.default_rng(seed).permutation(len(digits.target))
    cut = int(len(order) * (1 - HOLDOUT_FRACTION))
    x, y = digits.data.astype(np.float32), digits.target.astype(np.int64)
    return Split(x[order[:cut]], y[order[:cut]], x[order[cut:]], y[order[cut:]])


def image_to_pixels(data: str) -> list[float]:
    """Decode a base64 PNG or JPEG of any size into 64 grey values 0..16 (ink high)."""
    from PIL import Image, UnidentifiedImageError

    try:
        raw = base64.b64decode(data, validate=True)
        with Image.open(io.BytesIO(raw)) as image:
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise InputError(f"image of {image.width}x{image.height} pixels is too large")
            grey = np.asarray(
                image.convert("L").resize((8, 8), Image.Resampling.BOX), dtype=np.float32
            )
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        # Pillow's own guard fires (before ours) on images past twice its pixel limit.
        raise InputError(f"image is too large to decode: {exc}") from exc
    except (binascii.Error, UnidentifiedImageError, OSError, ValueError) as exc:
        raise InputError(f"image could not be decoded: {exc}") from exc
    border = np.concatenate([grey[0], grey[-1], grey[:, 0], grey[:, -1]])
    if border.mean() > 127:  # dark ink on a light page: invert so ink is high, as in training
        grey = 255.0 - grey
    return list((grey / 255.0 * 16.0).reshape(64))


class DigitsHandler(ModelHandler):
    """The built-in digits classifier."""

    name = "digits"
    input_schema = INPUT_SCHEMA
    label_schema = {"type": "integer", "minimum": 0, "maximum": 9}
    default_config = {"max_batch_size": 64, "max_batch_delay_ms": 2}

    def load(self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
        net = DigitsNet()
        net.load_state_dict(dict(tensors))
        self.net = net.to(self.device).eval()

    def prepare(self, item: Mapping[str, Any]) -> torch.Tensor:
        pixels = item["pixels"] if "pixels" in item else image_to_pixels(item["image"])
        return torch.tensor(pixels, dtype=torch.float32).reshape(1, 8, 8) / 16.0

    def predict(self, batch: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        x = self.to_device(torch.stack(list(batch)))
        with self.inference():
            probabilities = torch.softmax(self.net(x).float(), dim=1).cpu()
        return [
            {"label": int(p.argmax()), "probabilities": [round(float(v), 6) for v in p]}
            for p in probabilities
        ]

    def train(
        self,
        feedback: Sequence[Example] = (),
        start_from: Mapping[str, torch.Tensor] | None = None,
        *,
        seed: int = 0,
        epochs: int = 40,
    ) -> TrainedModel:
        split = dataset()
        x, y = split.train_x, split.train_y
        if feedback:
            extra_x = np.array([self._pixels(e.input) for e in feedback], dtype=np.float32)
            extra_y = np.array([int(e.label) for e in feedback], dtype=np.int64)
            x, y = np.concatenate([x, extra_x]), np.concatenate([y, extra_y])
        net = fit(x, y, seed=seed, epochs=epochs, start_from=start_from)
        accuracy = evaluate(net, split.holdout_x, split.holdout_y)
        metadata = {"architecture": "DigitsNet", "train_examples": str(len(y)), "seed": str(seed)}
        metrics = {"holdout_accuracy": accuracy, "train_examples": float(len(y))}
        return TrainedModel(tensors=net.state_dict(), metadata=metadata, metrics=metrics)

    @staticmethod
    def _pixels(item: Mapping[str, Any]) -> list[float]:
        return list(item["pixels"]) if "pixels" in item else image_to_pixels(item["image"])


def fit(
    x: np.ndarray,
    y: np.ndarray,
    *,
    seed: int,
    epochs: int,
    start_from: Mapping[str, torch.Tensor] | None = None,
) -> DigitsNet:
    """Train a DigitsNet on pixels ``x`` (0..16) and labels ``y``, deterministically for a seed."""
    torch.manual_seed(seed)
    net = DigitsNet()
    if start_from is not None:
        net.load_state_dict(dict(start_from))
    inputs = torch.from_numpy(x).reshape(-1, 1, 8, 8) / 16.0
    targets = torch.from_numpy(y)
    optimiser = torch.optim.Adam(net.parameters(), lr=2e-3)
    generator = torch.Generator().manual_seed(seed)
    net.train()
    for _ in range(epochs):
        for idx in torch.randperm(len(targets), generator=generator).split(64):
            optimiser.zero_grad()
            loss = nn.functional.cross_entropy(net(inputs[idx]), targets[idx])
            loss.backward()
            optimiser.step()
    return net.eval()


def evaluate(net: DigitsNet, x: np.ndarray, y: np.ndarray) -> float:
    """Accuracy of ``net`` on pixels ``x`` and labels ``y``."""
    with torch.inference_mode():
        predicted = net(torch.from_numpy(x).reshape(-1, 1, 8, 8) / 16.0).argmax(dim=1).numpy()
    return round(float((predicted == y).mean()), 4)


def schema_json() -> str:
    """The input schema as JSON (for docs)."""
    return json.dumps(INPUT_SCHEMA, indent=2)
