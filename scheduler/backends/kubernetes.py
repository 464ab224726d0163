"""A Kubernetes Deployment's replicas, through the API server's REST API.

Before scaling down, each worker pod gets a ``controller.kubernetes.io/pod-deletion-cost``
annotation: idle pods cost less than busy ones, so the ReplicaSet controller removes idle
pods first. A removed pod gets SIGTERM and ``terminationGracePeriodSeconds`` to drain.
Annotating needs ``get``/``list``/``patch`` on pods; without them it still scales, and warns.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import requests

from scheduler.backends import holds

log = logging.getLogger(__name__)

COST = "controller.kubernetes.io/pod-deletion-cost"
MERGE = {"Content-Type": "application/merge-patch+json"}
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")


class KubernetesError(RuntimeError):
    """Raised when the API server refuses a request."""


class KubernetesBackend:
    """Scales Deployment ``deployment`` in ``namespace`` of the API server at ``url``."""

    name = "kubernetes"

    def __init__(
        self,
        url: str,
        namespace: str,
        deployment: str,
        token: str | None = None,
        verify: bool | str = True,
    ) -> None:
        self._url = url.rstrip("/")
        self._deployment = f"/apis/apps/v1/namespaces/{namespace}/deployments/{deployment}"
        self._pods = f"/api/v1/namespaces/{namespace}/pods"
        self._http = requests.Session()
        self._http.verify = verify
        if token:
            self._http.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def in_cluster(cls, namespace: str | None, deployment: str) -> KubernetesBackend:
        """From the pod's service account (the autoscaler runs inside the cluster)."""
        import os

        host = os.environ["KUBERNETES_SERVICE_HOST"]
        port = os.environ.get("KUBERNETES_SERVICE_PORT", "443")
        own = (SERVICE_ACCOUNT / "namespace").read_text().strip()
        return cls(
            f"https://{host}:{port}",
            namespace or own,
            deployment,
            token=(SERVICE_ACCOUNT / "token").read_text().strip(),
            verify=str(SERVICE_ACCOUNT / "ca.crt"),
        )

    def current(self) -> int:
        # spec.replicas, not ready pods: a pod still pulling its image counts as started.
        return int(self._call("GET", self._deployment)["spec"].get("replicas") or 0)

    def scale(self, desired: int, busy: frozenset[str]) -> None:
        if desired < self.current():
            try:
                self.mark_costs(busy)
            except KubernetesError:
                # deploy/k8s grants the Deployment alone; pods get/list/patch enable this.
                log.warning("cannot annotate pod deletion costs; any pod may go", exc_info=True)
        log.info("scaling %s to %d replicas", self._deployment, desired)
        self._call("PATCH", self._deployment + "/scale", json={"spec": {"replicas": desired}})

    def mark_costs(self, busy: frozenset[str]) -> None:
        """Annotate each worker pod: busy ones cost more to delete than idle ones."""
        selector = self._call("GET", self._deployment)["spec"]["selector"]["matchLabels"]
        labels = ",".join(f"{k}={v}" for k, v in sorted(selector.items()))
        pods = self._call("GET", self._pods, params={"labelSelector": labels})["items"]
        for pod in pods:
            name = pod["metadata"]["name"]
            cost = "1000" if holds(busy, host=name) else "-1000"
            patch = {"metadata": {"annotations": {COST: cost}}}
            self._call("PATCH", f"{self._pods}/{name}", json=patch)

    def close(self) -> None:
        self._http.close()

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        headers = MERGE if method == "PATCH" else {}
        response = self._http.request(
            method, self._url + path, headers=headers, timeout=30, **kwargs
        )
        if response.status_code >= 400:
            raise KubernetesError(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return response.json()
