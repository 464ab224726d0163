"""The compose and kubernetes backends against fake Docker Engine and Kubernetes API servers
that speak real HTTP on loopback: the backends' real HTTP clients talk to them."""

from __future__ import annotations

import json
import socketserver
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

import pytest

from scheduler.backends.compose import NUMBER, PROJECT, SERVICE, ComposeBackend
from scheduler.backends.dry_run import DryRunBackend
from scheduler.backends.kubernetes import COST, KubernetesBackend


class FakeApi(ThreadingHTTPServer):
    """A loopback HTTP server whose ``route(method, path, query, body)`` answers requests."""

    def __init__(self) -> None:
        self.requests: list[tuple[str, str, dict[str, Any], Any, dict[str, str]]] = []
        api = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                url = urlparse(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                body = json.loads(self.rfile.read(length)) if length else None
                query = {k: v[0] for k, v in parse_qs(url.query).items()}
                api.requests.append((self.command, url.path, query, body, dict(self.headers)))
                status, answer = api.route(self.command, url.path, query, body)
                data = json.dumps(answer).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PATCH = _serve

            def log_message(self, *args: Any) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        raise NotImplementedError


class FakeDocker(FakeApi):
    """The few Docker Engine endpoints a compose backend needs, over a dict of containers."""

    def __init__(self) -> None:
        super().__init__()
        self.containers: dict[str, dict[str, Any]] = {}
        for n in (1, 2, 3):
            self.add(f"{n:x}" * 64, n, "running")
        self.add("f" * 64, 1, "running", service="api")

    def add(self, cid: str, number: int, state: str, service: str = "worker") -> None:
        labels = {PROJECT: "shop", SERVICE: service, NUMBER: str(number)}
        self.containers[cid] = {
            "Id": cid,
            "Created": 1000 + len(self.containers),
            "State": state,
            "Labels": labels,
            "Config": {
                "Image": "inferq:latest",
                "Cmd": ["inferq", "worker"],
                "Env": ["A=1"],
                "Labels": labels,
            },
            "HostConfig": {"RestartPolicy": {"Name": "unless-stopped"}},
            "NetworkSettings": {"Networks": {"shop_default": {}}},
        }

    def find(self, ref: str) -> dict[str, Any] | None:
        return next((c for cid, c in self.containers.items() if cid.startswith(ref)), None)

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        parts = path.split("/")[2:]  # drop "", "v1.41"
        if parts == ["containers", "json"]:
            wanted = json.loads(query.get("filters", "{}")).get("label", [])
            found = [
                {k: c[k] for k in ("Id", "Created", "State", "Labels")}
                for c in self.containers.values()
                if all(f"{k}={v}" in wanted for k, v in c["Labels"].items() if k != NUMBER)
                and (query.get("all") == "1" or c["State"] == "running")
            ]
            return 200, found
        if parts == ["containers", "create"]:
            cid = f"{len(self.containers) + 10:x}".rjust(64, "a")
            self.containers[cid] = {
                "Id": cid, "Created": 5000, "State": "created", "Labels": body["Labels"],
                "Config": body, "HostConfig": body["HostConfig"], "Name": query["name"],
            }  # fmt: skip
            return 201, {"Id": cid}
        container = self.find(parts[1]) if len(parts) > 1 else None
        if container is None:
            return 404, {"message": "no such container"}
        if parts[2:] == ["json"]:
            return 200, container
        if parts[2:] == ["start"]:
            container["State"] = "running"
            return 204, None
        if parts[2:] == ["stop"]:
            container["State"] = "exited"
            return 204, None
        return 404, {"message": path}

    def running(self) -> list[str]:
        return sorted(
            cid[:12]
            for cid, c in self.containers.items()
            if c["State"] == "running" and c["Labels"][SERVICE] == "worker"
        )


@pytest.fixture
def docker() -> Iterator[FakeDocker]:
    server = FakeDocker()
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def identity(host: str) -> str:
    return f"worker-{host}@{host}/abc123"


def test_compose_counts_only_the_projects_running_workers(docker: FakeDocker) -> None:
    backend = ComposeBackend(docker.url, "shop", grace_s=45)
    assert backend.current() == 3
    assert ComposeBackend(docker.url, "other").current() == 0


class UnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


def test_compose_reaches_the_engine_over_its_unix_socket(
    docker: FakeDocker, tmp_path: Path
) -> None:
    path = str(tmp_path / "docker.sock")
    server = UnixServer(path, docker.RequestHandlerClass)  # type: ignore[arg-type]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        backend = ComposeBackend(f"unix://{path}", "shop")
        assert backend.current() == 3
        assert backend.inspect("1" * 12)["Config"]["Image"] == "inferq:latest"
    finally:
        server.shutdown()
        server.server_close()


def test_compose_scale_down_stops_idle_containers_with_a_grace_period(docker: FakeDocker) -> None:
    backend = ComposeBackend(docker.url, "shop", grace_s=45)
    busy = "3" * 12
    # When two of three go while the newest one runs a job
    backend.scale(1, frozenset({identity(busy)}))
    # Then the busy container is kept, the idle ones got stop with the grace period
    assert docker.running() == [busy]
    stops = [(p, q) for m, p, q, _, _ in docker.requests if p.endswith("/stop")]
    assert len(stops) == 2 and all(q == {"t": "45"} for _, q in stops)


def test_compose_scales_up_by_restarting_stopped_then_creating(docker: FakeDocker) -> None:
    backend = ComposeBackend(docker.url, "shop")
    backend.scale(0, frozenset())
    assert backend.current() == 0
    # Stopped containers come back first
    backend.scale(3, frozenset())
    assert backend.current() == 3
    assert not [r for r in docker.requests if r[1].endswith("/create")]
    # Beyond them, a new container is copied from one of the service's
    backend.scale(4, frozenset())
    assert backend.current() == 4
    create = next(r for r in docker.requests if r[1].endswith("/create"))
    assert create[2] == {"name": "shop-worker-4"}
    assert create[3]["Image"] == "inferq:latest" and create[3]["Cmd"] == ["inferq", "worker"]
    assert create[3]["Labels"][NUMBER] == "4" and create[3]["Labels"][SERVICE] == "worker"
    assert create[3]["NetworkingConfig"]["EndpointsConfig"] == {
        "shop_default": {"Aliases": ["worker"]}
    }


class FakeKubernetes(FakeApi):
    """A Deployment, its pods, and the endpoints a kubernetes backend needs."""

    def __init__(self, pods_allowed: bool = True) -> None:
        super().__init__()
        self.pods_allowed = pods_allowed
        self.replicas = 3
        self.pods: dict[str, dict[str, str]] = {f"inferq-worker-{n}": {} for n in "abc"}

    def route(self, method: str, path: str, query: dict[str, str], body: Any) -> tuple[int, Any]:
        deployment = "/apis/apps/v1/namespaces/ml/deployments/inferq-worker"
        if path == deployment and method == "GET":
            selector = {"matchLabels": {"app.kubernetes.io/component": "worker"}}
            return 200, {"spec": {"replicas": self.replicas, "selector": selector}}
        if path == deployment + "/scale" and method == "PATCH":
            self.replicas = body["spec"]["replicas"]
            return 200, {"spec": {"replicas": self.replicas}}
        if path.startswith("/api/v1/namespaces/ml/pods"):
            if not self.pods_allowed:
                return 403, {"message": "forbidden"}
            name = path.rsplit("/", 1)[-1]
            if method == "GET" and name == "pods":
                assert query["labelSelector"] == "app.kubernetes.io/component=worker"
                items = [{"metadata": {"name": n, "annotations": a}} for n, a in self.pods.items()]
                return 200, {"items": items}
            if method == "PATCH" and name in self.pods:
                self.pods[name].update(body["metadata"]["annotations"])
                return 200, {}
        return 404, {"message": path}


@pytest.fixture(params=[True, False], ids=["pods-allowed", "pods-forbidden"])
def kube(request: pytest.FixtureRequest) -> Iterator[FakeKubernetes]:
    server = FakeKubernetes(pods_allowed=request.param)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_kubernetes_scales_the_deployment_and_marks_idle_pods_cheapest(
    kube: FakeKubernetes,
) -> None:
    backend = KubernetesBackend(kube.url, "ml", "inferq-worker", token="t0ken")
    assert backend.current() == 3
    backend.scale(1, frozenset({identity("inferq-worker-b")}))
    assert kube.replicas == 1 and backend.current() == 1
    patch = next(r for r in kube.requests if r[1].endswith("/scale"))
    assert patch[4]["Content-Type"] == "application/merge-patch+json"
    assert all(r[4]["Authorization"] == "Bearer t0ken" for r in kube.requests)
    if kube.pods_allowed:
        costs = {name: a[COST] for name, a in kube.pods.items()}
        assert costs == {
            "inferq-worker-a": "-1000",
            "inferq-worker-b": "1000",
            "inferq-worker-c": "-1000",
        }
    backend.scale(4, frozenset())
    assert kube.replicas == 4


def test_dry_run_follows_decisions_without_acting() -> None:
    backend = DryRunBackend(start=2)
    backend.scale(5, frozenset())
    assert backend.current() == 5
