"""Which device a worker process runs its models on."""

from __future__ import annotations

import torch

from inferq.errors import ConfigError


def choose_device(setting: str) -> torch.device:
    """``auto`` takes CUDA when present, else the CPU; ``cpu``/``cuda[:n]`` are taken as given."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"INFERQ_DEVICE={setting} but CUDA is not available")
    return device
