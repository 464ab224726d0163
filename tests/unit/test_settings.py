from __future__ import annotations

from pathlib import Path

import pytest

from inferq.errors import ConfigError
from inferq.settings import Settings


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.env == "development"
    assert settings.home == Path("var")
    assert settings.lanes == ("online",)


def test_variables_are_typed() -> None:
    settings = Settings.from_env(
        {
            "INFERQ_MAX_WAIT_S": "12.5",
            "INFERQ_WORKERS": "3",
            "INFERQ_HOME": "/tmp/x",
            "INFERQ_WORKER_LANES": "online,batch",
        }
    )
    assert settings.max_wait_s == 12.5
    assert settings.workers == 3
    assert settings.home == Path("/tmp/x")
    assert settings.lanes == ("online", "batch")


def test_round_trips_through_the_environment() -> None:
    settings = Settings.from_env(
        {}, database_url="postgresql://x/y", broker_url="redis://r:1/0", workers=4
    )
    assert Settings.from_env(settings.to_env()) == settings


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"INFERQ_WORKERS": "many"}, "INFERQ_WORKERS"),
        ({"INFERQ_ENV": "staging"}, "INFERQ_ENV"),
        ({"INFERQ_ENV": "production"}, "production needs"),
        ({"INFERQ_WORKER_LANES": "online,express"}, "unknown lane"),
        ({"INFERQ_MAX_ATTEMPTS": "0"}, "MAX_ATTEMPTS"),
    ],
)
def test_bad_settings_are_refused_with_the_variable_named(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


def test_redis_url_defaults_to_a_redis_broker_only() -> None:
    assert Settings(broker_url="redis://h:1/2").effective_redis_url == "redis://h:1/2"
    with pytest.raises(ConfigError):
        _ = Settings(broker_url="amqp://guest@h//").effective_redis_url
