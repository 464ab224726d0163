"""The worker service of a Docker Compose project, through the Docker Engine API.

Containers are found by compose's labels. Scaling up restarts a stopped worker container
when one exists (scaling to zero leaves them behind), else creates one from a running one
as template, as ``docker compose up --scale`` would. Scaling down stops idle containers
first (``POST /containers/{id}/stop?t=grace``: SIGTERM, SIGKILL only after the grace).
A container's hostname is its short id, which the worker's identity carries.
"""

from __future__ import annotations

import json
import logging
import socket
from typing import Any

import requests
import urllib3
from requests.adapters import HTTPAdapter

from scheduler.backends import idle_first

log = logging.getLogger(__name__)

API_VERSION = "v1.41"
PROJECT = "com.docker.compose.project"
SERVICE = "com.docker.compose.service"
NUMBER = "com.docker.compose.container-number"


class ComposeError(RuntimeError):
    """Raised when the Docker Engine refuses a request or has no container to copy."""


class ComposeBackend:
    """Scales ``service`` of compose ``project`` on the Docker Engine at ``url``
    (``http://host:port`` or ``unix:///var/run/docker.sock``)."""

    name = "compose"

    def __init__(self, url: str, project: str, service: str = "worker", grace_s: int = 60) -> None:
        self._http = requests.Session()
        if url.startswith("unix://"):
            self._http.mount("http://docker/", UnixAdapter(url[len("unix://") :]))
            url = "http://docker"
        self._url = url.rstrip("/") + "/" + API_VERSION
        self._project = project
        self._service = service
        self._grace_s = grace_s

    def containers(self, running: bool = True) -> list[dict[str, Any]]:
        """The service's containers (``running`` only, or stopped ones too), oldest first."""
        labels = [f"{PROJECT}={self._project}", f"{SERVICE}={self._service}"]
        params = {"all": "0" if running else "1", "filters": json.dumps({"label": labels})}
        found = self._call("GET", "/containers/json", params=params).json()
        return sorted(found, key=lambda c: (c.get("Created", 0), c["Id"]))

    def current(self) -> int:
        return len(self.containers())

    def inspect(self, ref: str) -> dict[str, Any]:
        """One container's full description (``ref``: an id, its prefix, or a name)."""
        return self._call("GET", f"/containers/{ref}/json").json()

    def scale(self, desired: int, busy: frozenset[str]) -> None:
        running = self.containers()
        if desired > len(running):
            self._add(desired - len(running), running)
        elif desired < len(running):
            ids = [c["Id"][:12] for c in running]
            for short in idle_first(ids, busy, len(running) - desired, by_host=True):
                log.info("stopping worker container %s (grace %ds)", short, self._grace_s)
                self._call(
                    "POST",
                    f"/containers/{short}/stop",
                    params={"t": self._grace_s},
                    timeout=self._grace_s + 30,
                )

    def close(self) -> None:
        self._http.close()

    def _add(self, count: int, running: list[dict[str, Any]]) -> None:
        every = self.containers(running=False)
        stopped = [c for c in every if c.get("State") != "running"]
        for container in stopped[:count]:
            self._call("POST", f"/containers/{container['Id']}/start")
        for _ in range(count - len(stopped[:count])):
            self._create(every)

    def _create(self, every: list[dict[str, Any]]) -> None:
        if not every:
            raise ComposeError(f"no {self._service} container to copy: start one with compose")
        template = self.inspect(every[0]["Id"])
        numbers = [int(c.get("Labels", {}).get(NUMBER, 0) or 0) for c in every]
        number = max(numbers, default=0) + 1
        config = template["Config"]
        networks = template.get("NetworkSettings", {}).get("Networks", {}) or {}
        body = {
            "Image": config["Image"],
            "Cmd": config.get("Cmd"),
            "Entrypoint": config.get("Entrypoint"),
            "Env": config.get("Env"),
            "WorkingDir": config.get("WorkingDir"),
            "Labels": {**config.get("Labels", {}), NUMBER: str(number)},
            "HostConfig": template.get("HostConfig", {}),
            "NetworkingConfig": {
                "EndpointsConfig": {net: {"Aliases": [self._service]} for net in networks}
            },
        }
        name = f"{self._project}-{self._service}-{number}"
        created = self._call("POST", "/containers/create", params={"name": name}, json=body)
        self._call("POST", f"/containers/{created.json()['Id']}/start")
        log.info("created worker container %s", name)

    def _call(
        self, method: str, path: str, timeout: float = 30.0, **kwargs: Any
    ) -> requests.Response:
        response = self._http.request(method, self._url + path, timeout=timeout, **kwargs)
        if response.status_code >= 400 and response.status_code != 304:
            raise ComposeError(f"{method} {path}: {response.status_code} {response.text[:200]}")
        return response


class _UnixConnection(urllib3.connection.HTTPConnection):
    def __init__(self, path: str, timeout: float | None) -> None:
        super().__init__("localhost", timeout=timeout)
        self._path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        sock.connect(self._path)
        self.sock = sock


class _UnixPool(urllib3.connectionpool.HTTPConnectionPool):
    def __init__(self, path: str) -> None:
        super().__init__("localhost")
        self._path = path

    def _new_conn(self) -> _UnixConnection:
        timeout = self.timeout.connect_timeout
        return _UnixConnection(self._path, timeout if isinstance(timeout, float | int) else None)


class UnixAdapter(HTTPAdapter):
    """requests over a Unix socket (the Docker Engine's default address)."""

    def __init__(self, path: str) -> None:
        super().__init__()
        self._path = path

    def get_connection_with_tls_context(self, *args: Any, **kwargs: Any) -> _UnixPool:
        return _UnixPool(self._path)
