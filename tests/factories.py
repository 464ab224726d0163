"""Inputs for tests: digits from the holdout set, with their true labels."""

from __future__ import annotations

import base64
import io
from typing import Any


def holdout(count: int | None = None) -> list[tuple[dict[str, Any], int]]:
    """``(input, true label)`` pairs from digits' fixed holdout split."""
    from workers.handlers.digits import dataset

    split = dataset()
    pairs = [
        ({"pixels": [float(v) for v in x]}, int(y))
        for x, y in zip(split.holdout_x, split.holdout_y, strict=True)
    ]
    return pairs[:count] if count else pairs


def pixels(value: float = 0.0, count: int = 64) -> dict[str, Any]:
    """A pixels input of ``count`` copies of ``value``."""
    return {"pixels": [value] * count}


def png_of(pixels: list[float], size: int = 32, ink_dark: bool = True) -> str:
    """A base64 PNG drawing an 8x8 digit at ``size``x``size``, dark ink on white by default."""
    import numpy as np
    from PIL import Image

    grey = np.array(pixels, dtype=np.float32).reshape(8, 8) / 16.0 * 255.0
    if ink_dark:
        grey = 255.0 - grey
    image = Image.fromarray(grey.astype("uint8"), "L").resize(
        (size, size), Image.Resampling.NEAREST
    )
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def register_fixture_model(settings: Any, name: str, handler: str, config: dict[str, Any]) -> None:
    """Serve ``name`` by a fixture handler (``module:Class``) with digits' active weights."""
    from db.registry import add_version, ensure_model, get_model, loadable_version
    from inferq.cli.common import db_session
    from workers.handlers.digits import INPUT_SCHEMA

    with db_session(settings) as session:
        digits = get_model(session, "digits")
        assert digits is not None and digits.active_version_id is not None
        weights = loadable_version(session, digits.active_version_id)
        assert weights is not None
        model = ensure_model(session, name, handler, INPUT_SCHEMA, config)
        if model.active_version_id is None:
            add_version(
                session,
                model,
                artifact=weights.artifact,
                sha256=weights.sha256,
                metrics={},
                created_by="tests",
                activate=True,
            )
