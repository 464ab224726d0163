"""``inferq models check``: a handler tried in this process, before any service runs it.

It loads the weights as a worker would, then checks what serving relies on: every example
fits the input schema; ``prepare`` takes it; ``predict`` gives one JSON output per input;
a batch gives the same outputs as the same inputs one by one (within a tolerance: batched
kernels may round differently); and it times batch sizes from 1 to the model's largest
(powers of two, and the largest itself), failing a size whose batch raises or miscounts.
"""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from inferq.core.errors import ConfigError

#: Relative and absolute tolerance when a batch's outputs are compared with single calls.
REL_TOL, ABS_TOL = 1e-4, 1e-5
#: At most this long is spent timing each batch size.
TIME_PER_SIZE_S = 0.5


@dataclasses.dataclass
class CheckReport:
    """What the check found: passed checks, failures, and per-batch-size timings."""

    handler: str
    examples: int
    device: str
    load_ms: float = 0.0
    passed: list[str] = dataclasses.field(default_factory=list)
    failures: list[str] = dataclasses.field(default_factory=list)
    #: batch size -> milliseconds per batch (median)
    timings: dict[int, float] = dataclasses.field(default_factory=dict)
    outputs: list[Any] = dataclasses.field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing failed."""
        return not self.failures

    def to_dict(self) -> dict[str, Any]:
        """JSON form (``--json``)."""
        body = dataclasses.asdict(self)
        body["ok"] = self.ok
        body["timings"] = [
            {"batch_size": size, "ms": ms, "inputs_per_s": round(size / ms * 1000, 1)}
            for size, ms in self.timings.items()
        ]
        return body

    def text(self) -> str:
        """The report for a person."""
        lines = [f"{self.handler}: {self.examples} example(s) on {self.device}, "
                 f"loaded in {self.load_ms:.0f} ms"]  # fmt: skip
        lines += [f"  ok    {line}" for line in self.passed]
        lines += [f"  FAIL  {line}" for line in self.failures]
        if self.timings:
            lines.append("  batch size   ms/batch   inputs/s")
            lines += [
                f"  {size:>10}   {ms:>8.2f}   {size / ms * 1000:>8.1f}"
                for size, ms in self.timings.items()
            ]
        if self.outputs:
            lines.append(f"  first output: {json.dumps(self.outputs[0])[:300]}")
        lines.append("ok" if self.ok else f"{len(self.failures)} check(s) failed")
        return "\n".join(lines)


def read_examples(path: Path) -> list[Any]:
    """Inputs from ``path``: one JSON object, a JSON list of them, or JSON lines."""
    text = path.read_text()
    try:
        value = json.loads(text)
        examples = value if isinstance(value, list) else [value]
    except ValueError:
        try:
            examples = [json.loads(line) for line in text.splitlines() if line.strip()]
        except ValueError as exc:
            raise ConfigError(f"{path}: neither JSON nor JSON lines: {exc}") from exc
    if not examples:
        raise ConfigError(f"{path} holds no example")
    return examples


def run_check(
    handler_path: str,
    weights: Path,
    example_file: Path,
    config: dict[str, Any],
    max_batch: int | None = None,
) -> CheckReport:
    """Load and exercise a handler; never raises for what the handler does wrong."""
    import jsonschema
    import torch

    from inferq.core.handlers import handler_class

    if not weights.exists():
        raise ConfigError(f"--weights {weights}: no such file or directory")
    cls = handler_class(handler_path)
    examples = read_examples(example_file)
    handler = cls(torch.device("cpu"), config)
    report = CheckReport(handler_path, len(examples), "cpu")
    started = time.perf_counter()
    try:
        handler.load_artifact(weights)
    except Exception as exc:
        report.failures.append(f"load: {type(exc).__name__}: {exc}")
        return report
    report.load_ms = round((time.perf_counter() - started) * 1000, 1)
    report.passed.append("the weights load")
    validator = jsonschema.Draft202012Validator(cls.input_schema)
    bad = [
        f"example {i}: {e.message}"
        for i, x in enumerate(examples)
        for e in validator.iter_errors(x)
    ]
    _record(report, "every example fits the input schema", bad)
    prepared = _prepare(handler, examples, report)
    if prepared is None:
        return report
    singles = _singles(handler, prepared, report)
    if singles is None:
        return report
    report.outputs = singles
    _compare_batch(handler, prepared, singles, report)
    largest = max_batch or int(handler.config.get("max_batch_size") or 64)
    _timings(handler, prepared, largest, report)
    return report


def _record(report: CheckReport, what: str, problems: Sequence[str]) -> None:
    if problems:
        report.failures.extend(problems[:10])
    else:
        report.passed.append(what)


def _prepare(handler: Any, examples: list[Any], report: CheckReport) -> list[Any] | None:
    prepared, problems = [], []
    for i, example in enumerate(examples):
        try:
            prepared.append(handler.prepare(example))
        except Exception as exc:
            problems.append(f"prepare(example {i}): {type(exc).__name__}: {exc}")
    _record(report, "prepare takes every example", problems)
    return None if problems else prepared


def _singles(handler: Any, prepared: list[Any], report: CheckReport) -> list[Any] | None:
    outputs, problems = [], []
    for i, item in enumerate(prepared):
        try:
            result = handler.predict([item])
        except Exception as exc:
            problems.append(f"predict([example {i}]): {type(exc).__name__}: {exc}")
            continue
        if not isinstance(result, list) or len(result) != 1:
            problems.append(f"predict([example {i}]) returned {_count(result)} outputs, not 1")
            continue
        try:
            json.dumps(result[0], allow_nan=False)
        except (TypeError, ValueError) as exc:
            problems.append(f"output of example {i} is not JSON: {exc}")
            continue
        outputs.append(result[0])
    _record(report, "one JSON output per input", problems)
    return None if problems else outputs


def _compare_batch(
    handler: Any, prepared: list[Any], singles: list[Any], report: CheckReport
) -> None:
    try:
        batch = handler.predict(list(prepared))
    except Exception as exc:
        report.failures.append(f"predict(all {len(prepared)}): {type(exc).__name__}: {exc}")
        return
    if not isinstance(batch, list) or len(batch) != len(prepared):
        report.failures.append(f"a batch of {len(prepared)} gave {_count(batch)} outputs")
        return
    differ = [i for i, (a, b) in enumerate(zip(batch, singles, strict=True)) if not close(a, b)]
    _record(
        report,
        f"a batch of {len(prepared)} gives what one-by-one calls give",
        [f"example {i}: batched {_short(batch[i])} != alone {_short(singles[i])}" for i in differ],
    )


def batch_sizes(largest: int) -> list[int]:
    """The batch sizes timed: the powers of two up to ``largest``, and ``largest`` itself
    (1, 2, 4, 8, 16, 32, 50 for 50). Every size from 1 would take ``largest`` times
    TIME_PER_SIZE_S; these show the curve and end at the batch a worker will run."""
    sizes, size = [], 1
    while size < largest:
        sizes.append(size)
        size *= 2
    return [*sizes, max(largest, 1)]


def _timings(handler: Any, prepared: list[Any], largest: int, report: CheckReport) -> None:
    for size in batch_sizes(largest):
        batch = [prepared[i % len(prepared)] for i in range(size)]
        try:
            outputs = handler.predict(batch)  # warms this shape up
            if not isinstance(outputs, list) or len(outputs) != size:
                report.failures.append(f"a batch of {size} gave {_count(outputs)} outputs")
                return
            report.timings[size] = _time(handler, batch)
        except Exception as exc:
            report.failures.append(f"predict(batch of {size}): {type(exc).__name__}: {exc}")
            return


def _time(handler: Any, batch: list[Any]) -> float:
    """Median milliseconds of ``handler.predict(batch)`` over up to TIME_PER_SIZE_S."""
    samples: list[float] = []
    deadline = time.perf_counter() + TIME_PER_SIZE_S
    while time.perf_counter() < deadline or len(samples) < 3:
        started = time.perf_counter()
        handler.predict(batch)
        samples.append((time.perf_counter() - started) * 1000)
        if len(samples) >= 50:
            break
    return round(statistics.median(samples), 3)


def close(a: Any, b: Any) -> bool:
    """Whether two JSON values are equal, numbers within the tolerances."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    if isinstance(a, int | float) and isinstance(b, int | float):
        return math.isclose(a, b, rel_tol=REL_TOL, abs_tol=ABS_TOL)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return bool(a == b)


def _short(value: Any) -> str:
    return json.dumps(value)[:120]


def _count(value: Any) -> str:
    return (
        str(len(value))
        if isinstance(value, list)
        else f"a {type(value).__name__} instead of a list of"
    )
