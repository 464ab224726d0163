"""Retraining's settings: schedules and rollout policies parse, or fail with a clear error."""

from __future__ import annotations

import datetime as dt

import pytest
from celery.schedules import crontab, schedule

from inferq.core.errors import ConfigError
from inferq.core.messages import TRAIN_TASK
from inferq.core.settings import Settings
from scheduler.retraining import beat_schedule, parse_schedule
from scheduler.rollout import Policy, decide, parse_policies


def test_schedules_are_cron_or_fixed_intervals_per_model() -> None:
    found = parse_schedule("digits=0 3 * * *; other = every 90s")

    assert found["digits"] == crontab("0", "3", "*", "*", "*")
    assert isinstance(found["other"], schedule)
    assert found["other"].run_every == dt.timedelta(seconds=90)


@pytest.mark.parametrize("text", ["digits=0 3 * *", "digits=every", "=0 3 * * *", "x=99 * * * *"])
def test_a_malformed_schedule_is_a_config_error(text: str) -> None:
    with pytest.raises(ConfigError, match="INFERQ_RETRAIN_SCHEDULE"):
        parse_schedule(text)


def test_beat_sends_the_training_task_to_the_training_lane() -> None:
    entries = beat_schedule(Settings.of(namespace="ns", retrain_schedule="digits=*/5 * * * *"))

    entry = entries["retrain digits"]
    assert entry["task"] == TRAIN_TASK
    assert entry["args"] == ["digits", None, "schedule"]
    assert entry["options"] == {"queue": "ns.training", "routing_key": "training"}


def test_policies_parse_per_model() -> None:
    assert parse_policies("digits=ab:0.2;b=promote:0.01;c=shadow;d=register") == {
        "digits": Policy("ab", 0.2),
        "b": Policy("promote", 0.01),
        "c": Policy("shadow", 0.0),
        "d": Policy("register", 0.0),
    }
    for bad in ("digits=ab:2", "digits=canary:0.1", "digits=promote:x"):
        with pytest.raises(ConfigError):
            parse_policies(bad)


def test_the_gate_compares_holdout_accuracy() -> None:
    better, worse, active = (
        {"holdout_accuracy": 0.97},
        {"holdout_accuracy": 0.9},
        {"holdout_accuracy": 0.95},
    )
    assert decide(Policy("promote", 0.01), better, active) == "promote"
    assert decide(Policy("promote", 0.05), better, active) == "hold"
    assert decide(Policy("ab", 0.2), better, active) == "experiment"
    assert decide(Policy("ab", 0.2), worse, active) == "hold"
    assert decide(Policy("register"), better, active) == "register"
    assert decide(Policy("ab", 0.2), worse, None) == "promote"  # nothing serves yet
