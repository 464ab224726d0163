"""docker-compose.yml and deploy/Dockerfile: what `docker-compose config` checks, and what it cannot."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from inferq.core.settings import Settings
from inferq.local.nginx import placeholders
from tests.services import CI
from tests.unit.deploy_checks import (
    CONSUMED_LANES,
    ROOT,
    check_invocation,
    inferq_invocations,
    lanes_consumed,
    unknown_settings,
)

COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
TEMPLATE = ROOT / "nginx" / "inferq.conf.template"
SECRETS = {
    "POSTGRES_PASSWORD": "pg-secret",
    "RABBITMQ_PASSWORD": "mq",
    "GRAFANA_ADMIN_PASSWORD": "gf",
}
PROFILES = ["rabbitmq", "gpu", "autoscaler", "monitoring"]
#: One-shot services: they exit, so "healthy" means "completed successfully".
ONE_SHOT = {"migrate"}


def docker_compose() -> str:
    found = shutil.which("docker-compose")
    if found is None:
        if CI:
            pytest.fail("CI: docker-compose is not installed (.ci/run installs it)")
        pytest.skip("docker-compose is not installed (apt-get install docker-compose)")
    return found


def compose_config(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("INFERQ_", "COMPOSE_"))}
    return subprocess.run(
        [docker_compose(), "-f", str(COMPOSE), *args],
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def rendered(*profiles: str) -> dict[str, Any]:
    """The file as compose reads it: anchors merged, variables filled, profiles chosen."""
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    result = compose_config(SECRETS, *flags, "config")
    assert result.returncode == 0, result.stderr
    return yaml.safe_load(result.stdout)  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def services() -> dict[str, Any]:
    return rendered(*PROFILES)["services"]  # type: ignore[no-any-return]


def test_docker_compose_accepts_the_file_with_every_profile() -> None:
    for profiles in ([], PROFILES):
        flags = [arg for profile in profiles for arg in ("--profile", profile)]
        result = compose_config(SECRETS, *flags, "config", "-q")
        assert result.returncode == 0, result.stderr


def test_each_required_secret_is_refused_when_missing_with_its_name() -> None:
    for name in SECRETS:
        result = compose_config({k: v for k, v in SECRETS.items() if k != name}, "config", "-q")
        assert result.returncode != 0
        assert f"set {name}" in result.stderr


def test_a_plain_up_runs_the_core_and_profiles_add_the_rest(services: dict[str, Any]) -> None:
    core = {name for name, service in services.items() if not service.get("profiles")}
    assert core == {
        *("postgres", "pgbouncer", "redis", "migrate", "api", "nginx", "worker"),
        *("worker-batch", "trainer", "webhooks", "beat"),
    }
    assert services["trainer"]["command"][-2:] == ["--lanes", "training"]
    assert services["worker-batch"]["command"] == ["inferq", "worker", "--lanes", "batch"]
    profiled = {name: service["profiles"] for name, service in services.items() if name not in core}
    assert profiled == {
        "rabbitmq": ["rabbitmq"],
        "worker-gpu": ["gpu"],
        "autoscaler": ["autoscaler"],
        "prometheus": ["monitoring"],
        "grafana": ["monitoring"],
        "alertmanager": ["monitoring"],
    }


def test_every_command_names_a_real_entry_point(services: dict[str, Any]) -> None:
    commands = 0
    for name, service in services.items():
        if not str(service.get("image", "")).startswith("inferq:"):
            continue
        # `inferq autoscaler` may be pending only in the service that runs it (issue 5).
        pending_ok = "autoscaler" in service.get("profiles", [])
        for args in inferq_invocations(service["command"]):
            assert check_invocation(args, pending_ok) is None, (name, args)
            commands += 1
    assert commands >= 7


def test_every_inferq_variable_is_a_setting() -> None:
    for path in (COMPOSE, DOCKERFILE, ROOT / "deploy" / "compose.env.example"):
        assert unknown_settings(path.read_text()) == set(), path


def test_api_and_workers_can_scale(services: dict[str, Any]) -> None:
    for name in ("api", "worker", "worker-gpu"):
        assert "container_name" not in services[name], name
        assert "ports" not in services[name], name
    # nginx is the one way in
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"nginx", "grafana"}


def test_beat_and_the_autoscaler_run_exactly_once(services: dict[str, Any]) -> None:
    for name in ("beat", "autoscaler"):
        # a fixed container name makes `--scale beat=2` fail
        assert services[name]["container_name"], name
        assert services[name].get("deploy", {}).get("replicas", 1) == 1


def test_every_service_has_a_healthcheck_and_waits_for_healthy_dependencies(
    services: dict[str, Any],
) -> None:
    for name, service in services.items():
        if name in ONE_SHOT:
            # `disable: true`, which Compose v1 writes as the test NONE
            check = service["healthcheck"]
            assert service["restart"] == "no"
            assert check.get("disable") is True or check.get("test") == ["NONE"], name
        else:
            assert service["healthcheck"]["test"], name
        for dependency, condition in service.get("depends_on", {}).items():
            expected = (
                "service_completed_successfully" if dependency in ONE_SHOT else "service_healthy"
            )
            assert condition["condition"] == expected, (name, dependency)
    for name in ("api", "worker", "beat"):
        assert services[name]["depends_on"]["migrate"]["condition"] == (
            "service_completed_successfully"
        )


def test_the_healthcheck_script_the_image_carries_is_the_one_services_call(
    services: dict[str, Any],
) -> None:
    dockerfile = DOCKERFILE.read_text()
    assert "COPY deploy/healthcheck.py /opt/inferq/healthcheck.py" in dockerfile
    calls = [s["healthcheck"]["test"] for s in services.values() if "healthcheck.py" in str(s)]
    assert {tuple(test[2:4]) for test in calls} >= {("/opt/inferq/healthcheck.py", "worker")}
    assert all(test[:3] == ["CMD", "python", "/opt/inferq/healthcheck.py"] for test in calls)


def test_gpu_workers_reserve_an_nvidia_device_each(services: dict[str, Any]) -> None:
    gpu = services["worker-gpu"]
    assert gpu["profiles"] == ["gpu"]
    devices = gpu["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    assert gpu["environment"]["INFERQ_DEVICE"] == "cuda"
    assert "cu" in gpu["build"]["args"]["TORCH_INDEX_URL"].rsplit("/", 1)[1]
    # the plain worker runs CPU torch
    assert "args" not in services["worker"]["build"]


def test_nginx_renders_the_shared_template_and_re_resolves_the_api(
    services: dict[str, Any],
) -> None:
    nginx = services["nginx"]
    volume = nginx["volumes"][0]
    if isinstance(volume, str):  # Compose v1 writes the short form
        source, target, mode = volume.split(":")
        volume = {"source": source, "target": target, "read_only": mode == "ro"}
    assert Path(volume["source"]) == TEMPLATE
    assert volume["target"] == "/etc/nginx/templates/default.conf.template"
    assert volume["read_only"] is True
    env = nginx["environment"]
    # every placeholder has a value (envsubst leaves an unset one as it is, and nginx fails)
    assert placeholders(TEMPLATE.read_text()) <= set(env)
    assert "resolve" in env["NGINX_UPSTREAM_SERVERS"].split()
    assert env["NGINX_RESOLVER"].startswith("resolver 127.0.0.11 ")
    # upstream "resolve" needs nginx >= 1.27.3
    version = tuple(int(p) for p in re.findall(r"\d+", nginx["image"].rsplit(":", 1)[1])[:2])
    assert version >= (1, 28) or version == (1, 27)
    # the same body limit as the API, and longer timeouts than the longest long-poll
    assert env["INFERQ_MAX_BODY_BYTES"] == services["api"]["environment"]["INFERQ_MAX_BODY_BYTES"]
    max_wait = float(services["api"]["environment"]["INFERQ_MAX_WAIT_S"])
    assert float(env["NGINX_PROXY_TIMEOUT_S"]) > max_wait


def test_the_image_runs_as_a_user_with_cpu_torch_by_default() -> None:
    dockerfile = DOCKERFILE.read_text()
    final_stage = dockerfile.rsplit("\nFROM ", 1)[1]
    user = re.search(r"^USER (\S+)", final_stage, re.M)
    assert user is not None and user.group(1).split(":")[0] not in ("root", "0")
    assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in dockerfile
    # every path the image copies exists here
    for source in re.findall(r"^COPY (?!--from)(.+) \S+$", dockerfile, re.M):
        for part in source.split():
            assert (ROOT / part).exists(), part


def test_every_lane_work_is_published_to_has_a_worker_in_a_plain_up(
    services: dict[str, Any],
) -> None:
    consumed = set()
    for service in services.values():
        if not service.get("profiles") and "command" in service:
            consumed |= lanes_consumed(service["command"], service.get("environment") or {})
    assert consumed == CONSUMED_LANES


def test_every_service_that_registers_or_serves_models_shares_the_artifact_volume(
    services: dict[str, Any],
) -> None:
    """Catches: a worker or the API on an artifact directory of its own container."""
    users = {"api", "worker", "worker-gpu", "worker-batch", "trainer", "migrate"}
    for name in users:
        targets = {
            v["target"] if isinstance(v, dict) else str(v).split(":")[1]
            for v in services[name].get("volumes", [])
        }
        assert "/var/lib/inferq/artifacts" in targets, name


def test_every_service_that_loads_models_keeps_its_artifact_cache_on_a_volume(
    services: dict[str, Any],
) -> None:
    """Catches: the worker's cache (<INFERQ_HOME>/artifact-cache) in the container's own
    filesystem (a recreated worker would fetch and hash every model again), or a worker
    that lost the artifact store's volume when it got the cache's."""
    from inferq.core.settings import Settings

    home = services["worker"]["environment"]["INFERQ_HOME"]
    cache = str(Settings.of(home=home).artifact_cache_path)  # INFERQ_ARTIFACT_CACHE_DIR unset
    assert "INFERQ_ARTIFACT_CACHE_DIR" not in services["worker"]["environment"]
    for name in ("worker", "worker-gpu", "worker-batch", "trainer"):
        mounted = {
            (v["source"], v["target"]) if isinstance(v, dict) else tuple(str(v).split(":")[:2])
            for v in services[name].get("volumes", [])
        }
        assert ("artifact-cache", cache) in mounted, name
        assert ("artifacts", "/var/lib/inferq/artifacts") in mounted, name
    # a new named volume takes the owner of the image's directory: the worker's user
    made = re.search(r"install -d -o inferq -g inferq (.+)$", DOCKERFILE.read_text(), re.M)
    assert made is not None and cache in made.group(1).split()


def test_pgbouncer_pools_transactions_and_only_migrations_go_around_it(
    services: dict[str, Any],
) -> None:
    """Catches: PgBouncer switched to session pooling (a server connection per client:
    the budget gone), or INFERQ_DATABASE_URL pointed back at postgres:5432 (tried both:
    POOL_MODE session; the URL's host postgres:5432)."""
    bouncer = services["pgbouncer"]["environment"]
    assert bouncer["POOL_MODE"] == "transaction"
    assert (bouncer["DB_HOST"], bouncer["DB_PORT"], bouncer["LISTEN_PORT"]) == (
        "postgres",
        "5432",
        "6432",
    )
    inferq = {
        name: s for name, s in services.items() if str(s.get("image", "")).startswith("inferq:")
    }
    assert {"api", "worker", "beat", "migrate", "autoscaler"} <= set(inferq)
    for name, service in inferq.items():
        settings = Settings.from_env(service["environment"])
        pooled = make_url(settings.require_database_url())
        direct = make_url(settings.require_direct_database_url())
        assert (pooled.host, pooled.port) == ("pgbouncer", 6432), name
        assert (direct.host, direct.port) == ("postgres", 5432), name
        assert pooled.database == direct.database == bouncer["DB_NAME"], name
        assert pooled.password == direct.password == SECRETS["POSTGRES_PASSWORD"], name
    # Migrations run `inferq db upgrade`, which takes the direct URL.
    assert inferq_invocations(services["migrate"]["command"])[0][:2] == ["db", "upgrade"]
