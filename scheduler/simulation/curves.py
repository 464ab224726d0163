"""Batching curves: seconds a worker spends on one batch of ``b`` jobs, and where they come from.

A curve is predict time (interpolated between measured batch sizes) plus the worker's own
pipeline: per batch, the claim and the store are one commit each (at the 1,800
one-connection commits/s measured here, 0.55 ms each) and one Redis pipeline, about 1.2 ms;
per job, decoding its input, encoding its output, its row and its signal. BENCHMARKS.md
measured the worker at 0.7 ms of CPU a job with 10.8 jobs a batch, of which predict took
2.1 ms a batch: 0.7 - (2.1 + 1.2) / 10.8 = about 0.4 ms a job.
"""

from __future__ import annotations

import dataclasses

import numpy as np

#: Claim commit + store commit at 1,800 commits/s (FACTS.md), plus one Redis pipeline.
PIPELINE_S = 2 / 1800 + 0.0001
#: The worker's CPU a job beyond predict and the per-batch commits (BENCHMARKS.md).
PER_JOB_S = 0.0007 - (0.0021 + PIPELINE_S) / 10.8


@dataclasses.dataclass(frozen=True)
class Curve:
    """Predict seconds at a few batch sizes, and the figures' source."""

    name: str
    sizes: tuple[int, ...]
    seconds: tuple[float, ...]
    source: str
    max_batch: int = 64
    pipeline_s: float = PIPELINE_S
    per_job_s: float = PER_JOB_S

    def latency(self, batch: int | np.ndarray) -> np.ndarray:
        """Seconds one batch of ``batch`` jobs keeps a worker busy (claim to stored)."""
        predict = np.interp(batch, self.sizes, self.seconds)
        # Past the last measured size, the last per-item cost continues.
        last = self.sizes[-1]
        slope = (self.seconds[-1] - self.seconds[-2]) / (last - self.sizes[-2])
        extra = np.maximum(np.asarray(batch, dtype=float) - last, 0.0) * slope
        jobs = np.asarray(batch, dtype=float) * self.per_job_s
        return np.asarray(predict + extra + self.pipeline_s + jobs, dtype=float)

    def throughputs(self, max_batch: int | None = None) -> np.ndarray:
        """Jobs/s of one busy worker at batch sizes 1..max_batch (index 0 is batch 1)."""
        sizes = np.arange(1, (max_batch or self.max_batch) + 1)
        return np.asarray(sizes / self.latency(sizes), dtype=float)


def _from_rates(sizes: tuple[int, ...], per_s: tuple[float, ...]) -> tuple[float, ...]:
    return tuple(b / r for b, r in zip(sizes, per_s, strict=True))


CURVES = {
    "digits-cpu": Curve(
        "digits-cpu",
        (1, 8, 64, 128),
        _from_rates((1, 8, 64, 128), (12391, 24307, 32460, 33063)),
        "measured here: BENCHMARKS.md, digits in-process, one torch thread, inputs/s at "
        "batch 1/8/64/128 = 12,391/24,307/32,460/33,063",
        max_batch=64,
    ),
    "embed-cpu": Curve(
        "embed-cpu",
        (1, 16, 64),
        (1 / 102, 16 / 225, 0.304),
        "measured here: BENCHMARKS.md, all-MiniLM-L6-v2 on one CPU thread: 102 inputs/s at "
        "batch 1, 225 at batch 16 (in-process), predict p50 304 ms for a batch of 64 "
        "(in the pipeline)",
        max_batch=64,
    ),
    "embed-gpu": Curve(
        "embed-gpu",
        (1, 256),
        (0.005 + 1 / 14200, 0.005 + 256 / 14200),
        "documented, not measured here: sbert.net's pretrained-models table gives "
        "all-MiniLM-L6-v2 14,200 sentences/s on one V100 (large batches); a 5 ms floor per "
        "forward (eager PyTorch, six layers, tokenizing) is our assumption. Replace with "
        "scripts/gpu-check --json on a GPU host",
        max_batch=256,
    ),
}
