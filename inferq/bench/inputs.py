"""Inputs for the bench: unique per job, so the result cache never answers -- within a run and
across runs against the same stack (the noise is seeded afresh each run: a fixed seed made a
second run's inputs the first run's, all answered from the cache)."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

WORDS = [
    "queue",
    "worker",
    "batch",
    "model",
    "latency",
    "tensor",
    "cache",
    "signal",
    "shard",
    "replica",
    "gradient",
    "vector",
]


def digits_inputs() -> Callable[[int], dict[str, Any]]:
    """Holdout digits with a little noise (distinct inputs, same labels)."""
    from sklearn.datasets import load_digits

    data = load_digits().data.tolist()
    rng = random.Random()  # seeded from the OS: another run, other inputs

    def make(n: int) -> dict[str, Any]:
        pixels = data[n % len(data)]
        return {"pixels": [min(16.0, v + rng.random() * 0.01) for v in pixels]}

    return make


def embed_inputs() -> Callable[[int], dict[str, Any]]:
    """Short distinct sentences."""
    rng = random.Random()

    def make(n: int) -> dict[str, Any]:
        words = " ".join(rng.choice(WORDS) for _ in range(8))
        return {"text": f"Sentence {n}: the {words}."}

    return make


def file_inputs(path: Path) -> Callable[[int], dict[str, Any]]:
    """Inputs from a JSONL file, one per line, cycled."""
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not lines:
        raise SystemExit(f"{path} holds no inputs")
    return lambda n: lines[n % len(lines)]


def inputs_for(model: str, path: Path | None) -> Callable[[int], dict[str, Any]]:
    """The input maker for ``model``: a file when given, else built-in generators."""
    if path is not None:
        return file_inputs(path)
    makers = {"digits": digits_inputs, "embed": embed_inputs}
    if model not in makers:
        raise SystemExit(f"no built-in inputs for {model!r}; pass --inputs FILE.jsonl")
    return makers[model]()
