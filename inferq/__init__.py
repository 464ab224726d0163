"""inferq: asynchronous, queue-driven serving for PyTorch models.

This module is the public surface that model packages and client code import; everything
else is inferq's own and may move between releases::

    from inferq import ModelHandler, InputError      # a model handler
    from inferq import Client, NotFound               # a client of a running system

Names are loaded on first use, so ``import inferq`` (and every ``inferq`` command) stays
free of torch, requests and the database driver until they are needed.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [  # the handler interface, the client, and the error tree
    "ArtifactError",
    "BadRequest",
    "Client",
    "ConfigError",
    "Conflict",
    "Example",
    "Forbidden",
    "Gone",
    "InferqError",
    "InputError",
    "InvalidInput",
    "ModelError",
    "ModelHandler",
    "NotFound",
    "PayloadTooLarge",
    "Problem",
    "RateLimited",
    "ServerError",
    "ServiceUnavailable",
    "TrainedModel",
    "Unauthorized",
    "UnsafeUrl",
    "UnsupportedMediaType",
    "__version__",
]

#: The module each public name is loaded from (the error tree: all the rest).
_HOMES = {
    "Example": "inferq.core.handlers",
    "ModelHandler": "inferq.core.handlers",
    "TrainedModel": "inferq.core.handlers",
    "Client": "inferq.client",
}

if TYPE_CHECKING:
    from inferq.client import Client
    from inferq.core.errors import (
        ArtifactError,
        BadRequest,
        ConfigError,
        Conflict,
        Forbidden,
        Gone,
        InferqError,
        InputError,
        InvalidInput,
        ModelError,
        NotFound,
        PayloadTooLarge,
        Problem,
        RateLimited,
        ServerError,
        ServiceUnavailable,
        Unauthorized,
        UnsafeUrl,
        UnsupportedMediaType,
    )
    from inferq.core.handlers import Example, ModelHandler, TrainedModel


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError(f"module 'inferq' has no attribute {name!r}")
    value = getattr(import_module(_HOMES.get(name, "inferq.core.errors")), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
