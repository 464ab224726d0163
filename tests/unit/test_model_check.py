"""``inferq models check`` and ``inferq init``: a model tried before anything serves it."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from safetensors.torch import save_file

from inferq.cli import main
from inferq.cli.model_check import close, run_check
from tests.fixture_models import tabular

MODULE = "tests.fixture_models.tabular"


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    save_file(tabular.weights(), str(tmp_path / "w.safetensors"))
    (tmp_path / "examples.json").write_text(json.dumps(tabular.EXAMPLES))
    return tmp_path / "w.safetensors", tmp_path / "examples.json"


def test_a_sound_model_passes_every_check_and_is_timed(files: tuple[Path, Path]) -> None:
    report = run_check(f"{MODULE}:TabularHandler", *files, {}, max_batch=8)
    assert report.ok, report.text()
    assert len(report.passed) == 5 and list(report.timings) == [1, 2, 4, 8]
    assert report.outputs[0]["label"] in (0, 1, 2)


def test_every_batch_size_up_to_the_largest_is_covered_and_the_largest_is_timed(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: timing powers of two only (with --max-batch 50, the batch a worker runs,
    50, was never timed)."""
    import inferq.cli.model_check as model_check

    monkeypatch.setattr(model_check, "TIME_PER_SIZE_S", 0.001)
    report = run_check(f"{MODULE}:TabularHandler", *files, {}, max_batch=50)
    assert report.ok, report.text()
    assert list(report.timings) == [1, 2, 4, 8, 16, 32, 50]
    assert model_check.batch_sizes(1) == [1] and model_check.batch_sizes(3) == [1, 2, 3]
    default = run_check(f"{MODULE}:TabularHandler", *files, {"max_batch_size": 5})
    assert list(default.timings) == [1, 2, 4, 5]  # the model's config, when not given


@pytest.mark.parametrize(
    ("handler", "says"),
    [
        ("LargeBatchFailsHandler", "predict(batch of 8): RuntimeError: out of memory at a batch"),
        ("LargeBatchDropsHandler", "a batch of 8 gave 4 outputs"),
    ],
)
def test_a_batch_size_that_raises_or_miscounts_while_timed_is_a_failure_line(
    files: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch, handler: str, says: str
) -> None:
    """Given a handler that is right for the two examples but raises (or drops outputs) at
    a batch of 8, when the check times sizes up to 16, then it reports that size as a
    failure, keeps the timings of the sizes before it, and the command exits 1.

    Catches: an exception from predict while timing escaping run_check (a traceback instead
    of a report), or timed batches whose output count is not checked."""
    import inferq.cli.model_check as model_check

    monkeypatch.setattr(model_check, "TIME_PER_SIZE_S", 0.001)
    report = run_check(f"{MODULE}:{handler}", *files, {}, max_batch=16)
    (failure,) = report.failures
    assert failure.startswith(says), failure
    assert list(report.timings) == [1, 2, 4]
    weights, examples = files
    result = CliRunner().invoke(
        main,
        ["models", "check", f"{MODULE}:{handler}", "--weights", str(weights),
         "--example", str(examples), "--max-batch", "16"],
    )  # fmt: skip
    assert result.exit_code == 1, result.output
    assert f"  FAIL  {says}" in result.stdout


@pytest.mark.parametrize(
    ("handler", "says"),
    [
        ("BatchDependentHandler", "batched"),  # catches: a batch that answers otherwise
        ("TensorOutputHandler", "not JSON"),  # catches: outputs that cannot be stored
    ],
)
def test_a_model_that_would_misbehave_in_service_fails_the_check(
    files: tuple[Path, Path], handler: str, says: str
) -> None:
    report = run_check(f"{MODULE}:{handler}", *files, {}, max_batch=2)
    assert not report.ok
    assert any(says in failure for failure in report.failures), report.failures


def test_examples_outside_the_schema_and_weights_that_do_not_fit_fail(
    files: tuple[Path, Path], tmp_path: Path
) -> None:
    weights, _ = files
    (tmp_path / "bad.jsonl").write_text('{"features": [1, 2]}\n')
    report = run_check(f"{MODULE}:TabularHandler", weights, tmp_path / "bad.jsonl", {})
    assert any("example 0" in f for f in report.failures), report.failures
    save_file(tabular.weights(hidden=16), str(tmp_path / "wide.safetensors"))
    wide = run_check(f"{MODULE}:TabularHandler", tmp_path / "wide.safetensors", files[1], {})
    assert (
        wide.failures
        and wide.failures[0].startswith("load:")
        and "size mismatch" in wide.failures[0]
    )


def test_close_compares_numbers_within_the_tolerance_and_everything_else_exactly() -> None:
    assert close({"p": [0.1, 0.2]}, {"p": [0.1 + 1e-9, 0.2]})
    assert not close({"p": [0.1]}, {"p": [0.11]})
    assert not close({"label": 1}, {"label": True})
    assert not close([1, 2], [1, 2, 3])


def test_init_writes_a_model_that_checks_and_whose_test_passes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Catches: a scaffold that does not run as written (the user's first command fails)."""
    runner = CliRunner()
    result = runner.invoke(main, ["init", "sentiment", "--dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == [
        "sentiment.safetensors", "sentiment_example.json", "sentiment_model.py",
        "test_sentiment_model.py",
    ]  # fmt: skip
    assert "inferq models add sentiment --handler sentiment_model:SentimentHandler" in result.stdout
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path))
    checked = runner.invoke(
        main,
        ["models", "check", "sentiment_model:SentimentHandler", "--weights",
         "sentiment.safetensors", "--example", "sentiment_example.json", "--json"],
    )  # fmt: skip
    assert checked.exit_code == 0, checked.output
    assert json.loads(checked.stdout)["ok"] is True
    # the scaffold refuses to overwrite a user's files
    again = runner.invoke(main, ["init", "sentiment", "--dir", str(tmp_path)])
    assert again.exit_code == 1 and "not overwriting" in again.stderr
    sys.modules.pop("sentiment_model", None)


def test_the_test_init_writes_passes_when_pytest_runs_it(tmp_path: Path) -> None:
    """Given `inferq init sentiment` run in an empty directory, when the user runs pytest on
    the test it wrote, as its docstring says, then that test passes.

    Catches: a scaffolded test that does not run as written (a wrong file name or command
    in the template, or a scaffolded model whose check fails)."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[2]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")]),
    }
    made = subprocess.run(
        [sys.executable, "-m", "inferq", "init", "sentiment"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr

    ran = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
         "test_sentiment_model.py"],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-2000:]
    assert "1 passed" in ran.stdout


def test_check_exits_non_zero_when_a_check_fails(files: tuple[Path, Path]) -> None:
    weights, examples = files
    result = CliRunner().invoke(
        main,
        ["models", "check", f"{MODULE}:BatchDependentHandler", "--weights", str(weights),
         "--example", str(examples), "--max-batch", "2"],
    )  # fmt: skip
    assert result.exit_code == 1 and "FAIL" in result.stdout
