from __future__ import annotations

from pathlib import Path

import pytest

from inferq.core.errors import ConfigError
from inferq.core.settings import Settings


def test_defaults_need_no_environment() -> None:
    settings = Settings.from_env({})
    assert settings.env == "development"
    assert settings.home == Path("var")
    assert settings.worker.lanes == ("online",)


def test_variables_are_typed() -> None:
    settings = Settings.from_env(
        {
            "INFERQ_MAX_WAIT_S": "12.5",
            "INFERQ_WORKERS": "3",
            "INFERQ_HOME": "/tmp/x",
            "INFERQ_WORKER_LANES": "online,batch",
        }
    )
    assert settings.api.max_wait_s == 12.5
    assert settings.local.workers == 3
    assert settings.home == Path("/tmp/x")
    assert settings.worker.lanes == ("online", "batch")


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
        ({"INFERQ_JOB_RETENTION": "a week"}, "INFERQ_JOB_RETENTION"),
        ({"INFERQ_JOB_RETENTION": "0d"}, "INFERQ_JOB_RETENTION"),
        ({"INFERQ_JOB_PARTITION": "1w"}, "INFERQ_JOB_PARTITION"),
    ],
)
def test_bad_settings_are_refused_with_the_variable_named(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Settings.from_env(env)


@pytest.mark.parametrize(
    ("text", "seconds"), [("7d", 604_800), ("12h", 43_200), ("90m", 5_400), ("30s", 30), ("45", 45)]
)
def test_retention_takes_durations_with_units(text: str, seconds: float) -> None:
    settings = Settings.from_env({"INFERQ_JOB_RETENTION": text, "INFERQ_JOB_PARTITION": text})
    assert settings.scheduler.job_retention_s == seconds == settings.scheduler.job_partition_s


def test_redis_url_defaults_to_a_redis_broker_only() -> None:
    assert Settings.of(broker_url="redis://h:1/2").effective_redis_url == "redis://h:1/2"
    with pytest.raises(ConfigError):
        _ = Settings.of(broker_url="amqp://guest@h//").effective_redis_url


def test_each_variable_lands_in_its_section() -> None:
    settings = Settings.from_env(
        {"INFERQ_MAX_BATCH_SIZE": "8", "INFERQ_KEY_RATE_BURST": "5", "INFERQ_RATE_LIMIT_RPS": "9"}
    )
    assert settings.worker.max_batch_size == 8
    assert settings.quotas.key_rate_burst == 5
    assert settings.front.rate_limit_rps == 9
    assert Settings().worker.max_batch_size == 64  # the defaults are untouched


def test_replace_routes_each_name_to_its_section_and_refuses_unknown_names() -> None:
    base = Settings.of(namespace="a")
    changed = base.replace(cache_ttl_s=5, port=9001, namespace="b")
    assert (changed.worker.cache_ttl_s, changed.local.port, changed.namespace) == (5, 9001, "b")
    assert (base.worker.cache_ttl_s, base.local.port) == (3600, 8080)
    with pytest.raises(TypeError, match="no field 'cache_ttl'"):
        base.replace(cache_ttl=5)


def test_the_autoscaler_policy_comes_from_settings_and_its_flags_override_them() -> None:
    from click.testing import CliRunner

    from inferq.cli import main
    from scheduler.autoscaler.policy import Policy

    env = {"INFERQ_AUTOSCALER_MIN_WORKERS": "0", "INFERQ_AUTOSCALER_MAX_WORKERS": "9"}
    policy = Policy.from_settings(Settings.from_env(env).autoscaler)
    assert (policy.min_workers, policy.max_workers, policy.target_queue_wait_s) == (0, 9, 30.0)
    # a flag wins over its setting: max 9 from the environment, min 12 from the flag
    result = CliRunner().invoke(main, ["autoscaler", "--min-workers", "12"], env=env)
    assert result.exit_code == 2 and "min_workers <= max_workers" in result.output
