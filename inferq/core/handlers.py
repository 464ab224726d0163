"""The model-handler interface: how a model plugs into inferq.

A handler is a class registered under the ``inferq.models`` entry-point group. It declares
the JSON Schema of one input (registered with the model in Postgres, so the API validates
without importing the handler or torch), loads its weights once per worker process from a
safetensors artifact, predicts a whole batch in one call, and may train a new version.

    [options.entry_points]
    inferq.models =
        digits = workers.handlers.digits:DigitsHandler
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from importlib import import_module
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from inferq.core.errors import ModelError

if TYPE_CHECKING:
    import torch

ENTRY_POINT_GROUP = "inferq.models"


@dataclasses.dataclass(frozen=True)
class Example:
    """One labelled input that training can learn from (from feedback or a dataset)."""

    input: Mapping[str, Any]
    label: Any


@dataclasses.dataclass(frozen=True)
class TrainedModel:
    """What :meth:`ModelHandler.train` returns: weights, metadata and holdout metrics."""

    tensors: Mapping[str, torch.Tensor]
    metadata: Mapping[str, str]
    metrics: Mapping[str, float]


class ModelHandler(abc.ABC):
    """Base class of every model: load once, predict batches, optionally train."""

    #: The model's name in the API (``"model": "digits"``).
    name: ClassVar[str]
    #: JSON Schema (2020-12) of one job input.
    input_schema: ClassVar[dict[str, Any]]
    #: JSON Schema of a feedback label (the true answer), or None when it cannot learn.
    label_schema: ClassVar[dict[str, Any] | None] = None
    #: Per-model serving options stored with the model (batch size, autocast…).
    default_config: ClassVar[dict[str, Any]] = {}

    def __init__(self, device: torch.device, config: Mapping[str, Any] | None = None) -> None:
        self.device = device
        self.config = {**self.default_config, **(config or {})}

    @abc.abstractmethod
    def load(self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
        """Build the model from its weights; runs once per worker process and version."""

    def inference(self) -> contextlib.ExitStack:
        """``inference_mode`` plus the model's autocast (config ``autocast``: bf16 or fp16)."""
        import torch

        stack = contextlib.ExitStack()
        stack.enter_context(torch.inference_mode())
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(
            str(self.config.get("autocast"))
        )
        if dtype is not None:
            stack.enter_context(torch.autocast(device_type=self.device.type, dtype=dtype))
        return stack

    def to_device(self, batch: torch.Tensor) -> torch.Tensor:
        """Move a host batch to the model's device: pinned memory and an async copy on CUDA."""
        if self.device.type == "cuda":
            return batch.pin_memory().to(self.device, non_blocking=True)
        return batch.to(self.device)

    def prepare(self, item: Mapping[str, Any]) -> Any:
        """Turn one validated input into what :meth:`predict` takes; raise ``InputError``."""
        return item

    @abc.abstractmethod
    def predict(self, batch: Sequence[Any]) -> list[dict[str, Any]]:
        """Predict a batch of prepared inputs; one output per input, in order."""

    def train(
        self,
        feedback: Sequence[Example] = (),
        start_from: Mapping[str, torch.Tensor] | None = None,
        *,
        seed: int = 0,
    ) -> TrainedModel:
        """Train a new version from the handler's base data plus ``feedback``."""
        raise ModelError(f"model {self.name!r} cannot be trained")


def handler_class(name: str) -> type[ModelHandler]:
    """The handler registered as ``name`` in the ``inferq.models`` entry points.

    ``name`` may also be a ``module:Class`` path, for handlers that are not packaged.
    """
    if ":" in name:
        module, _, attr = name.partition(":")
        cls = getattr(import_module(module), attr, None)
    else:
        found = [e for e in entry_points(group=ENTRY_POINT_GROUP) if e.name == name]
        if not found:
            raise ModelError(f"no model handler named {name!r} (entry points {ENTRY_POINT_GROUP})")
        cls = found[0].load()
    if not (isinstance(cls, type) and issubclass(cls, ModelHandler)):
        raise ModelError(f"{name!r} is not a ModelHandler")
    return cls


def handler_names() -> list[str]:
    """Names of every installed handler."""
    return sorted(entry.name for entry in entry_points(group=ENTRY_POINT_GROUP))
