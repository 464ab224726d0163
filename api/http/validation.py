"""JSON Schema validation with short, safe error messages (never echoing huge inputs)."""

from __future__ import annotations

import base64
import binascii
from typing import Any

import jsonschema_rs
from jsonschema import Draft202012Validator, FormatChecker
from jsonschema.exceptions import ValidationError

from inferq.core.canonical import canonical_json
from inferq.core.errors import InvalidInput

MAX_ERRORS = 10
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")

format_checker = FormatChecker()


@format_checker.checks("image-base64")
def _is_image(value: object) -> bool:
    """A base64 string whose bytes start like a PNG or a JPEG (decoded by the worker)."""
    if not isinstance(value, str):
        return True
    try:
        head = base64.b64decode(value[:64] + "=" * (-len(value[:64]) % 4), validate=True)
        base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return False
    return head.startswith(IMAGE_SIGNATURES)


_validators: dict[bytes, Draft202012Validator] = {}


def validator_for(schema: dict[str, Any]) -> Draft202012Validator:
    """A compiled validator for ``schema`` (cached by the schema's JSON text)."""
    key = canonical_json(schema)
    found = _validators.get(key)
    if found is None:
        found = Draft202012Validator(schema, format_checker=format_checker)
        _validators[key] = found
    return found


_fast: dict[bytes, Any] = {}


def fast_validator(schema: dict[str, Any]) -> Any:
    """A compiled Rust validator for ``schema`` (cached): it answers "valid?" about 100x
    faster than the Python one, which is asked only to explain an instance that fails, and
    stays the judge of it."""
    key = canonical_json(schema)
    found = _fast.get(key)
    if found is None:
        found = jsonschema_rs.validator_for(
            schema,
            formats={"image-base64": lambda v: format_checker.conforms(v, "image-base64")},
            validate_formats=True,
        )
        _fast[key] = found
    return found


def _pointer(prefix: str, error: ValidationError) -> str:
    return prefix + "".join(f"/{part}" for part in error.absolute_path)


def _describe(error: ValidationError) -> str:
    kind, expected, instance = error.validator, error.validator_value, error.instance
    sized = len(instance) if isinstance(instance, (list, str, dict)) else None
    messages = {
        "type": lambda: f"must be of type {expected}",
        "minItems": lambda: f"must have at least {expected} items (got {sized})",
        "maxItems": lambda: f"must have at most {expected} items (got {sized})",
        "minLength": lambda: f"must be at least {expected} characters long",
        "maxLength": lambda: f"must be at most {expected} characters long (got {sized})",
        "minimum": lambda: f"must be >= {expected}",
        "maximum": lambda: f"must be <= {expected}",
        "minProperties": lambda: f"must have at least {expected} field(s)",
        "maxProperties": lambda: f"must have at most {expected} field(s) (got {sized})",
        "format": lambda: f"is not a valid {expected}",
        "enum": lambda: f"must be one of {expected}",
        "const": lambda: f"must be {expected!r}",
        "pattern": lambda: f"must match {expected}",
    }
    describe = messages.get(str(kind))
    return describe() if describe else error.message[:200]


def check(schema: dict[str, Any], instance: Any, pointer: str = "") -> None:
    """Raise :class:`InvalidInput` listing up to ten ways ``instance`` breaks ``schema``."""
    try:
        if fast_validator(schema).is_valid(instance):
            return
    except (ValueError, OverflowError, RecursionError):  # what it cannot judge, Python does
        pass
    errors = sorted(
        validator_for(schema).iter_errors(instance), key=lambda e: list(map(str, e.path))
    )
    if errors:
        shown = [
            {"pointer": _pointer(pointer, e) or "/", "detail": _describe(e)}
            for e in errors[:MAX_ERRORS]
        ]
        first = shown[0]
        raise InvalidInput(f"{first['pointer']} {first['detail']}", errors=shown)
