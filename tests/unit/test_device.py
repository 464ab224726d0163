"""Which device a worker runs its models on (workers/device.py, INFERQ_DEVICE). These machines
have no GPU: CUDA is reported present or absent by monkeypatching torch.cuda."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from inferq.core.errors import ConfigError
from workers.device import choose_device

Report = Callable[[int], None]


@pytest.fixture
def gpus(monkeypatch: pytest.MonkeyPatch) -> Report:
    """``gpus(n)``: torch reports n CUDA devices from now on (0: no CUDA at all)."""

    def report(count: int) -> None:
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)

    return report


def test_auto_takes_cuda_when_it_is_present(gpus: Report) -> None:
    """Catches: `auto` that always answers cpu (a GPU worker that never uses its GPU)."""
    gpus(1)
    assert choose_device("auto") == torch.device("cuda")


def test_auto_takes_the_cpu_without_cuda(gpus: Report) -> None:
    """Catches: `auto` that answers cuda without asking torch (on a CPU host every batch
    would fail instead of running on the CPU)."""
    gpus(0)
    assert choose_device("auto") == torch.device("cpu")


def test_cpu_is_taken_as_given_even_beside_a_gpu(gpus: Report) -> None:
    """Catches: an explicit `cpu` overridden by a GPU that is present."""
    gpus(1)
    assert choose_device("cpu") == torch.device("cpu")


def test_a_named_cuda_device_is_taken_as_given(gpus: Report) -> None:
    """Catches: `cuda:1` collapsed to the first GPU (two workers meant for two GPUs sharing one)."""
    gpus(2)
    assert choose_device("cuda:1") == torch.device("cuda", 1)
    assert choose_device("cuda") == torch.device("cuda")


@pytest.mark.parametrize("setting", ["cuda", "cuda:0"])
def test_cuda_without_cuda_is_a_config_error(gpus: Report, setting: str) -> None:
    """Catches: INFERQ_DEVICE=cuda accepted on a host without CUDA (the worker would start and
    then fail every batch, instead of refusing with a message that names the setting)."""
    gpus(0)
    with pytest.raises(ConfigError, match=f"INFERQ_DEVICE={setting} but CUDA is not available"):
        choose_device(setting)


def test_a_cuda_device_the_host_does_not_have_is_a_config_error(gpus: Report) -> None:
    """Catches: `cuda:2` accepted on a host with two GPUs (0 and 1)."""
    gpus(2)
    with pytest.raises(ConfigError, match="INFERQ_DEVICE=cuda:2 but this host has 2 CUDA"):
        choose_device("cuda:2")


def test_a_device_torch_does_not_know_is_a_config_error(gpus: Report) -> None:
    """Catches: a typo such as `gpu` escaping as torch's RuntimeError, which names no setting."""
    gpus(1)
    with pytest.raises(ConfigError, match="INFERQ_DEVICE=gpu: use auto, cpu or cuda"):
        choose_device("gpu")
