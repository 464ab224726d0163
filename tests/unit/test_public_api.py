"""The public surface model packages and clients import: ``inferq.__all__``, pinned.

Everything else in inferq may move between releases (it did, in the re-layout); these names
may not. A change here is a change to users' code: add a name freely, remove one only with
a deprecation.
"""

from __future__ import annotations

import subprocess
import sys

import inferq

PUBLIC = [
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


def test_the_public_names_are_pinned() -> None:
    assert sorted(inferq.__all__) == sorted(PUBLIC)


def test_every_public_name_resolves_to_the_object_inferq_uses() -> None:
    from inferq.client import Client
    from inferq.core import errors, handlers

    assert inferq.ModelHandler is handlers.ModelHandler
    assert inferq.Client is Client
    assert inferq.NotFound is errors.NotFound
    for name in PUBLIC:
        assert getattr(inferq, name) is not None
    assert issubclass(inferq.InputError, inferq.ModelError)
    assert issubclass(inferq.NotFound, inferq.Problem)


def test_an_unknown_name_is_an_attribute_error() -> None:
    try:
        inferq.Settings  # type: ignore[attr-defined]  # noqa: B018
    except AttributeError as exc:
        assert "Settings" in str(exc)
    else:
        raise AssertionError("inferq.Settings is not public")


def test_importing_inferq_loads_neither_torch_nor_the_http_client() -> None:
    code = "import sys, inferq; print('torch' in sys.modules, 'requests' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.split() == ["False", "False"], out.stderr
