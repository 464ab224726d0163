"""The same training gives the same artifact: seed-0 digits trained in two homes (two
processes) are stored under one SHA-256."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

TRAIN_AND_STORE = """
import sys, torch
from inferq.core.artifacts import open_store
from inferq.core.settings import Settings
from inferq.domain.weights import store_tensors
from workers.handlers.digits import DigitsHandler
torch.set_num_threads(1)
trained = DigitsHandler(torch.device("cpu")).train(seed=0, epochs=1)
settings = Settings.of(home=sys.argv[1])
print(store_tensors(open_store(settings), trained.tensors, trained.metadata).sha256)
"""


def test_seed_0_weights_trained_in_two_homes_are_the_same_artifact(tmp_path: Path) -> None:
    """Catches: safetensors writing its metadata in hash-map order, a new order (and so a
    new digest) in every process."""
    digests = [
        subprocess.run(
            [sys.executable, "-c", TRAIN_AND_STORE, str(tmp_path / home)],
            cwd=ROOT, capture_output=True, text=True, check=True, timeout=120,
        ).stdout.strip()
        for home in ("home-a", "home-b", "home-c")
    ]  # fmt: skip
    assert len(digests[0]) == 64
    assert len(set(digests)) == 1, digests


def test_a_canonical_artifact_still_reads_back_with_its_metadata() -> None:
    import torch

    from inferq.core.artifacts import pack, unpack

    tensors = {"b": torch.arange(3.0), "a": torch.ones(2, 2, dtype=torch.float16)}
    metadata = {"seed": "0", "architecture": "x", "train_examples": "10"}
    data, sha = pack(tensors, metadata)

    read, meta = unpack(data, sha)
    assert torch.equal(read["b"], tensors["b"]) and torch.equal(read["a"], tensors["a"])
    assert meta == metadata
    assert int.from_bytes(data[:8], "little") % 8 == 0
