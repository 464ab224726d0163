"""A digits model whose training crashes (as diverging or bad data would), while it serves."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from inferq import Example, TrainedModel
from workers.handlers.digits import DigitsHandler


class BrokenTrainDigits(DigitsHandler):
    name = "broken-train-digits"

    def train(
        self,
        feedback: Sequence[Example] = (),
        start_from: Mapping[str, Any] | None = None,
        *,
        seed: int = 0,
        **options: Any,
    ) -> TrainedModel:
        raise ValueError(f"loss is nan after 3 steps on {len(feedback)} feedback examples")
