"""scripts/gpu-check must keep working: run it on the CPU with a tiny budget."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_runs_and_reports_every_batch_size(tmp_path: Path) -> None:
    out = tmp_path / "gpu.json"
    result = subprocess.run(
        [
            sys.executable,
            str(ROOT / "scripts/gpu-check"),
            "--device",
            "cpu",
            "--models",
            "digits",
            "--seconds",
            "0.05",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert result.returncode == 0, result.stderr[-2000:]
    report = json.loads(out.read_text())
    fp32 = report["models"]["digits/fp32"]
    assert fp32["agreement_with_cpu"] == 1.0
    assert set(fp32["inputs_per_s"]) == {"1", "8", "32", "64", "128", "256"}
    assert all(rate > 0 for rate in fp32["inputs_per_s"].values())
