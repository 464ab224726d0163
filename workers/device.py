"""Which device a worker process runs its models on."""

from __future__ import annotations

import os

import torch

from inferq.core.errors import ConfigError


def configure_threads(threads: int) -> None:
    """Intra-op threads per worker process (0: one per two cores).

    Small batches gain nothing from more threads, and idle OpenMP threads spin: on a host
    shared with the API and Postgres, scale out with worker processes instead.
    """
    torch.set_num_threads(threads or max(1, (os.cpu_count() or 2) // 2))


def choose_device(setting: str) -> torch.device:
    """``auto`` takes CUDA when present, else the CPU; ``cpu``/``cuda[:n]`` are taken as given,
    and refused with a ConfigError when this host cannot honour them."""
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(setting)
    except RuntimeError as exc:
        raise ConfigError(f"INFERQ_DEVICE={setting}: use auto, cpu or cuda[:n]") from exc
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(f"INFERQ_DEVICE={setting} but CUDA is not available")
        count = torch.cuda.device_count()
        if (device.index or 0) >= count:
            raise ConfigError(f"INFERQ_DEVICE={setting} but this host has {count} CUDA device(s)")
    return device
