"""deploy/k8s: the manifests hang together, run real commands, and scale the right things."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from sqlalchemy.engine import make_url

from inferq.core.broker import make_celery, queue_name
from inferq.core.settings import Settings
from inferq.local.nginx import placeholders
from tests.unit.deploy_checks import (
    CONSUMED_LANES,
    ROOT,
    check_invocation,
    inferq_invocations,
    lanes_consumed,
    unknown_settings,
)

K8S = ROOT / "deploy" / "k8s"
TEMPLATE = ROOT / "nginx" / "inferq.conf.template"


def load(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


@pytest.fixture(scope="module")
def objects() -> dict[tuple[str, str], dict[str, Any]]:
    found = {}
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in load(path):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, key
            found[key] = doc
    return found


def deployments(objects: dict) -> dict[str, dict[str, Any]]:
    return {name: doc for (kind, name), doc in objects.items() if kind == "Deployment"}


def container(doc: dict[str, Any]) -> dict[str, Any]:
    (only,) = doc["spec"]["template"]["spec"]["containers"]
    return only  # type: ignore[no-any-return]


def test_kustomize_applies_every_manifest_but_the_keda_alternative() -> None:
    listed = load(K8S / "kustomization.yaml")[0]["resources"]
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml", "worker-keda.yaml"}
    assert sorted(listed) == sorted(files)


def test_there_are_deployments_for_every_service(objects: dict) -> None:
    assert set(deployments(objects)) == {
        "inferq-api", "inferq-worker", "inferq-beat", "inferq-autoscaler", "inferq-nginx",
        "inferq-worker-batch", "inferq-trainer", "inferq-webhooks", "inferq-pgbouncer",
    }  # fmt: skip


def test_every_lane_work_is_published_to_has_a_worker(objects: dict) -> None:
    config = objects[("ConfigMap", "inferq-config")]["data"]
    consumed = set()
    for doc in deployments(objects).values():
        spec = container(doc)
        env = {**config, **{e["name"]: e.get("value", "") for e in spec.get("env", [])}}
        consumed |= lanes_consumed(spec.get("command", []), env)
    assert consumed == CONSUMED_LANES


def test_beat_and_the_autoscaler_are_one_pod_that_never_overlaps_its_successor(
    objects: dict,
) -> None:
    for name in ("inferq-beat", "inferq-autoscaler"):
        spec = deployments(objects)[name]["spec"]
        assert spec["replicas"] == 1 and spec["strategy"] == {"type": "Recreate"}, name


def test_services_and_deployments_select_their_own_pods(objects: dict) -> None:
    for name, doc in deployments(objects).items():
        labels = doc["spec"]["template"]["metadata"]["labels"]
        assert doc["spec"]["selector"]["matchLabels"].items() <= labels.items(), name
    pods = [d["spec"]["template"]["metadata"]["labels"] for d in deployments(objects).values()]
    for (kind, name), doc in objects.items():
        if kind == "Service":
            matched = [p for p in pods if doc["spec"]["selector"].items() <= p.items()]
            assert len(matched) == 1, name


def test_api_pods_are_probed_on_readyz_and_healthz(objects: dict) -> None:
    api = container(deployments(objects)["inferq-api"])
    assert api["readinessProbe"]["httpGet"]["path"] == "/readyz?scope=node"
    assert api["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert api["ports"][0]["containerPort"] == 8000
    # headless, so nginx sees every ready pod and balances over them itself
    assert objects[("Service", "inferq-api")]["spec"]["clusterIP"] == "None"


def test_workers_beat_and_autoscaler_are_probed_by_the_image_healthcheck(objects: dict) -> None:
    expected = {
        "inferq-worker": "worker",
        "inferq-beat": "deps",
        "inferq-autoscaler": "deps",
    }
    for name, check in expected.items():
        probe = container(deployments(objects)[name])["livenessProbe"]["exec"]["command"]
        assert probe == ["python", "/opt/inferq/healthcheck.py", check], name


def test_every_command_names_a_real_entry_point_and_every_setting_exists(objects: dict) -> None:
    commands = 0
    for (kind, name), doc in objects.items():
        if kind not in ("Deployment", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        for box in spec["containers"]:
            if box["image"] != "inferq":
                continue
            # `inferq autoscaler` may be pending only in its own Deployment (issue 5).
            pending_ok = name == "inferq-autoscaler"
            for args in inferq_invocations(box["command"]):
                assert check_invocation(args, pending_ok) is None, (name, args)
                commands += 1
            sources = {next(iter(ref.values()))["name"] for ref in box["envFrom"]}
            assert sources == {"inferq-config", "inferq-secrets"}, name
    assert commands >= 6
    for path in K8S.glob("*.yaml"):
        assert unknown_settings(path.read_text()) == set(), path


def test_pods_run_as_a_user(objects: dict) -> None:
    for (kind, name), doc in objects.items():
        if kind in ("Deployment", "Job"):
            context = doc["spec"]["template"]["spec"]["securityContext"]
            assert context["runAsNonRoot"] is True and context["runAsUser"] != 0, name


def test_nginx_carries_the_shared_template_and_fills_every_placeholder(objects: dict) -> None:
    template = objects[("ConfigMap", "inferq-nginx-template")]["data"]["default.conf.template"]
    assert template == TEMPLATE.read_text(), (
        "deploy/k8s/nginx.yaml must carry nginx/inferq.conf.template unchanged; copy it there"
    )
    env = {e["name"]: e for e in container(deployments(objects)["inferq-nginx"])["env"]}
    assert placeholders(template) <= set(env)
    assert "resolve" in env["NGINX_UPSTREAM_SERVERS"]["value"].split()
    assert "inferq-api.inferq.svc.cluster.local:8000" in env["NGINX_UPSTREAM_SERVERS"]["value"]
    config = objects[("ConfigMap", "inferq-config")]["data"]
    assert float(env["NGINX_PROXY_TIMEOUT_S"]["value"]) > float(config["INFERQ_MAX_WAIT_S"])
    assert env["INFERQ_MAX_BODY_BYTES"]["valueFrom"]["configMapKeyRef"]["name"] == "inferq-config"


def test_keda_scales_the_workers_on_the_redis_list_of_the_online_lane(objects: dict) -> None:
    (keda,) = load(K8S / "worker-keda.yaml")
    assert keda["kind"] == "ScaledObject"
    assert keda["spec"]["scaleTargetRef"]["name"] == "inferq-worker"
    (trigger,) = keda["spec"]["triggers"]
    assert trigger["type"] == "redis"
    # The list kombu keeps the lane in: global_keyprefix "<namespace>:", then the queue name.
    namespace = objects[("ConfigMap", "inferq-config")]["data"]["INFERQ_NAMESPACE"]
    settings = Settings.of(namespace=namespace, broker_url="redis://redis:6379/0")
    prefix = make_celery(settings).conf.broker_transport_options["global_keyprefix"]
    assert trigger["metadata"]["listName"] == prefix + queue_name(settings, "online")
    assert trigger["metadata"]["listName"] == "inferq:inferq.online"


def test_keda_scales_the_workers_to_zero_and_the_first_waiting_message_wakes_one() -> None:
    """Catches: minReplicaCount 1 (KEDA never goes to zero and activation plays no part),
    activationListLength of 1 or more (a lone job waits with no worker to run it), or
    activation left to a default nobody chose."""
    (keda,) = load(K8S / "worker-keda.yaml")
    spec = keda["spec"]
    (trigger,) = spec["triggers"]
    metadata = trigger["metadata"]
    assert "activationListLength" in metadata
    # KEDA's redis scaler is active while LLEN > activationListLength (redis_scaler.go); KEDA
    # moves the Deployment 0 -> 1 when a trigger is active and 1 -> 0 after cooldownPeriod
    # without activity, and only when minReplicaCount is 0.
    activation = int(metadata["activationListLength"])

    def active(waiting: int) -> bool:
        return waiting > activation

    assert spec["minReplicaCount"] == 0
    assert not active(0), "an empty lane must let the last worker go"
    assert active(1), "the first job to arrive must wake a worker"
    assert int(metadata["listLength"]) > activation
    assert spec["maxReplicaCount"] >= 1
    # Going to zero costs a cold start: not before several polls have found the lane empty.
    assert spec["cooldownPeriod"] >= 10 * spec["pollingInterval"]


def test_the_autoscaler_may_scale_the_workers_and_nothing_else(objects: dict) -> None:
    role = objects[("Role", "inferq-autoscaler")]
    assert {name for rule in role["rules"] for name in rule["resourceNames"]} == {"inferq-worker"}
    spec = deployments(objects)["inferq-autoscaler"]["spec"]["template"]["spec"]
    assert spec["serviceAccountName"] == "inferq-autoscaler"
    binding = objects[("RoleBinding", "inferq-autoscaler")]
    assert binding["subjects"][0]["name"] == "inferq-autoscaler"
    assert binding["roleRef"]["name"] == "inferq-autoscaler"


#: The pods that read or write model artifacts: uploads, serving, training, migration.
ARTIFACT_USERS = {"inferq-api", "inferq-worker", "inferq-worker-batch", "inferq-trainer"}


def test_every_pod_that_registers_or_serves_models_shares_the_artifact_store(
    objects: dict,
) -> None:
    """Catches: a pod on its own empty artifact directory (its jobs would fail as
    model-unavailable, or its uploads vanish with the pod)."""
    claim = objects[("PersistentVolumeClaim", "inferq-artifacts")]
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    pods = {name: doc for name, doc in deployments(objects).items() if name in ARTIFACT_USERS}
    pods["inferq-migrate"] = objects[("Job", "inferq-migrate")]
    assert set(pods) == ARTIFACT_USERS | {"inferq-migrate"}
    for name, doc in pods.items():
        spec = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        assert volumes["artifacts"]["persistentVolumeClaim"]["claimName"] == "inferq-artifacts"
        mounts = {m["mountPath"]: m["name"] for m in container(doc).get("volumeMounts", [])}
        assert mounts.get("/var/lib/inferq/artifacts") == "artifacts", name


#: The pods that load models, and so keep a cache of fetched artifacts.
MODEL_LOADERS = {"inferq-worker", "inferq-worker-batch", "inferq-trainer"}


def test_every_pod_that_loads_models_keeps_its_artifact_cache_across_container_restarts(
    objects: dict,
) -> None:
    """Catches: the worker's cache (<INFERQ_HOME>/artifact-cache) in the container's own
    filesystem (a restarted container would fetch and hash every model again), or an
    emptyDir limit below the cache's own cap (the pod would be evicted as the cache fills)."""
    from inferq.core.settings import Settings

    cache = str(Settings.of(home="/var/lib/inferq").artifact_cache_path)
    cap = Settings.of().artifacts.artifact_cache_bytes
    pods = {name: doc for name, doc in deployments(objects).items() if name in MODEL_LOADERS}
    assert set(pods) == MODEL_LOADERS
    for name, doc in pods.items():
        spec = doc["spec"]["template"]["spec"]
        volumes = {v["name"]: v for v in spec["volumes"]}
        mounts = {m["mountPath"]: m["name"] for m in container(doc).get("volumeMounts", [])}
        assert mounts.get(cache) == "artifact-cache", name
        limit = volumes["artifact-cache"]["emptyDir"]["sizeLimit"]
        assert limit.endswith("Gi") and int(limit[:-2]) * 2**30 > cap, name


def secret_literals() -> dict[str, str]:
    """The ``--from-literal`` values of the README's ``inferq-secrets`` command."""
    text = (K8S / "README.md").read_text()
    return dict(re.findall(r"--from-literal=(\w+)='([^']*)'", text))


def test_pgbouncer_pools_transactions_and_only_migrations_go_around_it(objects: dict) -> None:
    """Catches: PgBouncer switched to session pooling, the Secret's INFERQ_DATABASE_URL
    pointed back at Postgres, or a URL naming a Service or port PgBouncer does not have
    (tried: POOL_MODE session; the README's URL at postgres.example:5432)."""
    config = objects[("ConfigMap", "inferq-pgbouncer")]["data"]
    assert config["POOL_MODE"] == "transaction"
    service = objects[("Service", "inferq-pgbouncer")]["spec"]
    assert [p["port"] for p in service["ports"]] == [int(config["LISTEN_PORT"])]
    settings = Settings.from_env(secret_literals())
    pooled = make_url(settings.require_database_url())
    direct = make_url(settings.require_direct_database_url())
    namespace = objects[("Namespace", "inferq")]["metadata"]["name"]
    assert pooled.host == f"inferq-pgbouncer.{namespace}.svc.cluster.local"
    assert pooled.port == int(config["LISTEN_PORT"])
    assert (direct.host, direct.port) == (config["DB_HOST"], int(config["DB_PORT"]))
    assert pooled.database == direct.database == config["DB_NAME"]
    # No manifest sets either URL itself: every pod takes them from the Secret.
    assert "INFERQ_DATABASE_URL" not in objects[("ConfigMap", "inferq-config")]["data"]
    migrate = container(objects[("Job", "inferq-migrate")])
    assert inferq_invocations(migrate["command"])[0][:2] == ["db", "upgrade"]
