"""A digits model that kills its own worker process on one input: every pixel equal to 13."""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import Any

import torch

from workers.handlers.digits import DigitsHandler

POISON = {"pixels": [13.0] * 64}


class PoisonDigits(DigitsHandler):
    name = "poison-digits"

    def predict(self, batch: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        if any(bool((item == 13 / 16).all()) for item in batch):
            os.kill(os.getpid(), signal.SIGKILL)
        return super().predict(batch)
