"""The model-handler interface: how a model plugs into inferq.

A handler is a class named by a ``module:Class`` path or registered under the
``inferq.models`` entry-point group. It declares the JSON Schema of one input (registered
with the model in Postgres, so the API validates without importing the handler or torch),
loads its weights once per worker process from a safetensors artifact (one file, or a
directory: config, tokenizer, shards), predicts a whole batch in one call, and may train a
new version. The smallest handler for a trained ``nn.Module`` names its input schema,
builds the module, and turns inputs into tensors and outputs into JSON::

    class Iris(ModelHandler):
        name = "iris"
        input_schema = {"type": "object", "required": ["features"], ...}

        def build(self) -> nn.Module:             # weights come from the artifact
            return IrisNet()

        def prepare(self, item):                  # one input -> what predict takes
            return item["features"]

        def predict(self, batch):                 # a batch -> one JSON output each
            with self.inference():
                scores = self.module(torch.tensor(batch, device=self.device))
            return [{"label": int(s.argmax())} for s in scores]
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
from collections.abc import Mapping, Sequence
from importlib import import_module
from importlib.metadata import entry_points
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from inferq.core.errors import ArtifactError, ModelError

if TYPE_CHECKING:
    import torch
    from torch import nn

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
        #: The module :meth:`build` made and :meth:`load` filled, when the handler builds one.
        self.module: Any = None

    def build(self) -> nn.Module | None:
        """The model's ``nn.Module`` with the architecture its weights fit (its config in
        ``self.config``); None when the handler loads its weights some other way.

        With a module, :meth:`load` needs no code: it loads the weights into it strictly
        (every name and shape must match), and :meth:`expected_tensors` tells the API and
        the CLI what an upload must hold."""
        return None

    def load_artifact(self, path: Path) -> None:
        """Load the version's artifact from ``path``: one safetensors file, or a directory
        whose ``*.safetensors`` files (shards) are merged. Override it for artifacts that
        hold more than weights (a tokenizer, a config)."""
        from inferq.core.artifacts.packing import read_tensors

        tensors, metadata = read_tensors(path)
        self.load(tensors, metadata)

    def load(self, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str]) -> None:
        """Build the model from its weights; runs once per worker process and version.

        By default: the :meth:`build` module with ``tensors`` loaded strictly, on the
        handler's device, in eval mode, as ``self.module``."""
        module = self.build()
        if module is None:
            raise ModelError(f"{type(self).__name__} implements neither load() nor build()")
        try:
            module.load_state_dict(dict(tensors), strict=True)
        except RuntimeError as exc:  # torch names the missing, unexpected and misshapen keys
            raise ArtifactError(f"the weights do not fit {type(self).__name__}: {exc}") from exc
        self.module = module.to(self.device).eval()

    @classmethod
    def bundled_artifact(cls) -> Path | None:
        """Weights that ship with the handler's package (a file or a directory), registered
        when ``inferq models add`` is given no ``--weights``; None when there are none."""
        return None

    def expected_tensors(self) -> dict[str, dict[str, Any]] | None:
        """``{name: {"dtype", "shape"}}`` the weights must hold, from :meth:`build` (made on
        the meta device: no memory, no time); None when the handler does not say."""
        import torch

        with torch.device("meta"):
            module = self.build()
        if module is None:
            return None
        return {
            name: {"dtype": str(tensor.dtype).removeprefix("torch."), "shape": list(tensor.shape)}
            for name, tensor in module.state_dict().items()
        }

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
        """Predict a batch of prepared inputs; one output per input, in order. Each output
        is stored as JSON: plain numbers (finite), strings, lists and dicts (``.tolist()`` a
        tensor). One that is not fails its own job as ``invalid-output``."""

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
        try:
            cls = getattr(import_module(module), attr, None)
        except ImportError as exc:
            raise ModelError(f"cannot import the handler module {module!r}: {exc}") from exc
        if cls is None:
            raise ModelError(f"module {module!r} has no {attr!r}")
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
