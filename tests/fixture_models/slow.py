"""A digits model that takes ``delay_s`` (from its config) per batch: a worker holds jobs long."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from workers.handlers.digits import DigitsHandler


class SlowDigits(DigitsHandler):
    name = "slow-digits"
    default_config = {"delay_s": 0.5}

    def predict(self, batch: Sequence[torch.Tensor]) -> list[dict[str, Any]]:
        time.sleep(float(self.config["delay_s"]))
        return super().predict(batch)
