"""The command line as a newcomer meets it: what it says when something is missing, and
output that reads in a screenful."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from inferq.cli import main
from inferq.cli.client_cmds import render
from inferq.core.settings import Settings


def invoke(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.stdout, result.stderr


def test_inferq_has_a_version() -> None:
    code, out, _ = invoke({}, "--version")
    assert code == 0 and out.startswith("inferq, version ")


def test_submit_help_says_what_each_option_does_and_where_url_and_key_come_from() -> None:
    code, out, _ = invoke({}, "submit", "--help")
    assert code == 0
    text = " ".join(out.split())
    for words in ("give up waiting", "online (the default) or batch", "A/B experiment"):
        assert words in text, words
    assert "INFERQ_URL" in text and "INFERQ_API_KEY" in text and "INFERQ_HOME" in text
    assert "--example" in text


def test_a_client_command_with_nothing_running_says_what_it_looked_for(tmp_path: Path) -> None:
    """Catches: `inferq submit` from another directory failing without naming INFERQ_HOME."""
    env = {"INFERQ_HOME": str(tmp_path / "elsewhere"), "INFERQ_URL": "", "INFERQ_API_KEY": ""}
    code, _, err = invoke(env, "submit", "--model", "digits", "--example")
    assert code == 1
    assert "INFERQ_HOME" in err and str(tmp_path / "elsewhere" / "up.json") in err, err
    assert "INFERQ_URL" in err and "INFERQ_API_KEY" in err


def test_an_admin_command_with_nothing_running_says_what_it_looked_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With INFERQ_HOME relative, as a newcomer sets it. Catches: the home printed as given
    (`runs from elsewhere`, relative to who knows where) and no file named."""
    monkeypatch.chdir(tmp_path)
    env = {"INFERQ_HOME": "elsewhere", "INFERQ_DATABASE_URL": ""}
    code, _, err = invoke(env, "keys", "list")
    assert code == 1
    home = tmp_path.resolve() / "elsewhere"
    assert f"runs from {home} (INFERQ_HOME" in err, err
    assert str(home / "up.json") in err and str(home / "services.json") in err, err
    assert "INFERQ_DATABASE_URL" in err


def test_scaling_says_when_no_autoscaler_has_decided_anything(settings: Settings) -> None:
    code, out, err = invoke(settings.to_env(), "scaling", "--limit", "0")
    assert code == 0 and json.loads(out) == []
    assert "no autoscaler" in err and "--autoscale" in err


def test_a_job_prints_compactly_with_lists_of_numbers_on_one_line() -> None:
    """Catches: ten probabilities and 64 pixels on a line each (about 105 lines a job)."""
    job = {
        "id": "x",
        "input": {"pixels": [0] * 64},
        "output": {"label": 3, "probabilities": [0.1] * 10},
        "metrics": {"queue_ms": 1.5},
        "errors": [{"pointer": "/a"}],
    }
    text = render(job)
    assert json.loads(text) == job
    assert len(text.splitlines()) <= 20, text
    assert any(line.strip().startswith('"probabilities": [0.1, ') for line in text.splitlines())
