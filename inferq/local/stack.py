"""The local stack behind ``inferq up``: embedded services, one-time setup, and supervisord.

This module decides what runs and drives the stack's life: nginx on the public port in front of
the API nodes (one node on the public port without nginx), workers, and beat, all under
supervisord (:mod:`inferq.local.supervise`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import psutil

from inferq.core.errors import InferqError
from inferq.core.logs import info
from inferq.core.scrape import free_ports
from inferq.core.settings import Settings
from inferq.local import nginx, scrape_targets
from inferq.local.embedded import (
    EmbeddedService,
    RedisPlan,
    needs_redis,
    plan_redis,
    reachable,
    redis_changes,
    start_missing,
    stop_stale,
    wait_for_redis,
)
from inferq.local.supervise import (
    Program,
    SupervisorPaths,
    start_supervisor,
    stop_supervisor,
    stop_timeout,
)

#: How supervisord runs our commands: this interpreter, so children import the same inferq.
LAUNCHER = (sys.executable, "-m", "inferq")
READY_TIMEOUT_S = 120.0
DOWN_TIMEOUT_S = 90.0
#: The development key is its stack's operator's too: the README's model operations use it.
DEV_SCOPES = ("submit", "read", "admin", "operator")
#: How much lower batch workers' CPU priority is than the rest of the stack (nice, 0-19).
BATCH_NICENESS = 10


class StackError(InferqError):
    """Raised when the local stack cannot start, is already running, or will not stop."""


class Stopped(BaseException):
    """Raised in the main thread by SIGINT or SIGTERM; unwinds ``inferq up`` into its shutdown."""


@dataclasses.dataclass(frozen=True)
class StackPaths(SupervisorPaths):
    """Where the stack keeps its state, all under one absolute ``home``."""

    up_json = property(lambda self: self.home / "up.json")
    #: The addresses of the stack's databases, for the CLI (owner-readable only).
    services_json = property(lambda self: self.home / "services.json")
    api_key = property(lambda self: self.home / "dev-api-key")
    #: This home's id (INFERQ_INSTANCE), which claims the Redis the stack runs.
    instance = property(lambda self: self.home / "instance")
    nginx_paths = property(lambda self: nginx.NginxPaths(self.home))


@dataclasses.dataclass(frozen=True)
class Front:
    """nginx on the public port in front of API nodes on loopback ports."""

    nginx_argv: tuple[str, ...]
    node_ports: tuple[int, ...]


def plan_front(settings: Settings, paths: StackPaths) -> Front | None:
    """nginx in front of ``api_nodes`` API nodes on free ports; None (and why) without it."""
    if settings.local.api_nodes < 1:
        raise StackError("--api-nodes must be at least 1")
    binary = nginx.find_nginx(settings.front.nginx)
    missing = _why_no_nginx(settings, binary)
    if binary is None or missing:
        asked = (
            f" (not the {settings.local.api_nodes} asked for)"
            if settings.local.api_nodes > 1
            else ""
        )
        info(f"note: {missing}: serving one API node{asked} directly on port {settings.local.port}")
        return None
    ports = tuple(free_ports(settings.local.api_nodes, avoid=(settings.local.port,)))
    return Front(nginx.command(binary, paths.nginx_paths), ports)


def _why_no_nginx(settings: Settings, binary: str | None) -> str:
    if settings.front.nginx == "off":
        return "nginx is off (INFERQ_NGINX=off)"
    if binary is None:
        return "nginx is not installed (apt-get install nginx)"
    if not nginx.TEMPLATE.exists():
        return f"the nginx template {nginx.TEMPLATE} is missing from this install"
    return ""


def programs(
    settings: Settings, launcher: Sequence[str] = LAUNCHER, front: Front | None = None
) -> list[Program]:
    """Everything the stack runs: workers first, then beat, then the API that accepts work."""
    launcher = tuple(launcher)
    beat = Program("beat", (*launcher, "beat"), priority=200, stopwaitsecs=5)
    online = autoscaler_programs(settings, launcher) or worker_programs(settings, launcher)
    workers = [*online, *batch_worker_programs(settings, launcher)]
    workers += [trainer_program(launcher), webhooks_program(launcher)]
    return [*workers, beat, *api_programs(settings, launcher, front)]


def example_program(settings: Settings) -> str:
    """A program the stack runs, named as supervisorctl names it (``group:name``), for the
    banner's hint: the first online worker, else the autoscaler (``--autoscale``), else the
    first other worker (``--workers 0``)."""
    first = programs(settings)[0]
    return f"{first.group}:{first.name}" if first.group else first.name


def connection_budget(settings: Settings) -> str:
    """The most Postgres connections this stack's processes open, and where they come from
    (the banner's line; the same sum as ``inferq db connections``)."""
    from inferq.core.connections import Fleet, budget, summary

    return summary(budget(settings, Fleet.local(settings)))


def api_programs(
    settings: Settings, launcher: tuple[str, ...], front: Front | None = None
) -> list[Program]:
    """The API: nodes on loopback ports behind nginx on the public port, or one node on it."""
    if front is None:
        argv = (*launcher, "api", "--host", "127.0.0.1", "--port", str(settings.local.port))
        return [Program("api", argv, priority=300, stopwaitsecs=10)]
    nodes = [
        Program(
            f"api-{i}",
            (*launcher, "api", "--host", "127.0.0.1", "--port", str(port)),
            priority=300,
            stopwaitsecs=10,
            group="api",
        )
        for i, port in enumerate(front.node_ports, start=1)
    ]
    # Stopped first, and gracefully (SIGQUIT): it stops accepting, then lets open requests
    # finish, for up to worker_shutdown_timeout, while the nodes behind it still answer.
    proxy = Program("nginx", front.nginx_argv, priority=400, stopwaitsecs=15, stopsignal="QUIT")
    return [*nodes, proxy]


def worker_programs(settings: Settings, launcher: tuple[str, ...]) -> list[Program]:
    """``settings.local.workers`` Celery workers, in one group so that they stop together."""
    # SIGTERM goes to the worker's main process alone: a prefork pool's children reset SIGTERM
    # to its default and would die mid-job if the whole group got it, while the parent's warm
    # shutdown lets them finish. killasgroup still removes them all after stopwaitsecs.
    return [
        Program(
            f"worker-{i}",
            (*launcher, "worker", "--name", f"worker-{i}"),
            priority=100,
            stopwaitsecs=30,
            stopasgroup=False,
            group="workers",
        )
        for i in range(1, settings.local.workers + 1)
    ]


def autoscaler_programs(settings: Settings, launcher: tuple[str, ...]) -> list[Program]:
    """With ``autoscale``, the autoscaler in place of fixed workers: it starts and drains
    ``inferq worker`` children itself (the local backend), between the bounds."""
    bounds = settings.local.autoscale_bounds
    if bounds is None:
        return []
    low, high = bounds
    argv = (*launcher, "autoscaler", "--backend", "local")
    return [
        Program(
            "autoscaler",
            (*argv, "--min-workers", str(low), "--max-workers", str(high)),
            priority=100,
            # On SIGTERM it drains its workers (each finishes its batch, up to 30 s) first.
            stopwaitsecs=45,
            stopasgroup=False,
            group="workers",
        )
    ]


def trainer_program(launcher: tuple[str, ...]) -> Program:
    """One worker of the training lane alone: a retraining never holds up served jobs."""
    return Program(
        "trainer",
        (*launcher, "worker", "--name", "trainer", "--lanes", "training"),
        priority=100,
        stopwaitsecs=30,
        stopasgroup=False,
        group="workers",
    )


def webhooks_program(launcher: tuple[str, ...]) -> Program:
    """One worker of the webhooks lane alone: a slow receiver holds up other deliveries,
    never predictions."""
    return Program(
        "webhooks",
        (*launcher, "worker", "--name", "webhooks", "--lanes", "webhooks"),
        priority=100,
        stopwaitsecs=30,
        stopasgroup=False,
        group="workers",
    )


def batch_worker_programs(settings: Settings, launcher: tuple[str, ...]) -> list[Program]:
    """``settings.local.batch_workers`` workers of the batch lane alone: a batch of any size never
    queues ahead of online jobs, which the other workers serve. On a shared host they also
    run at a lower CPU priority (``nice``), so an online job never waits for a core behind
    them; alone on the host, they still get all of it."""
    nice = shutil.which("nice")
    lower = (nice, "-n", str(BATCH_NICENESS)) if nice else ()
    return [
        Program(
            f"batch-{i}",
            (*lower, *launcher, "worker", "--name", f"batch-{i}", "--lanes", "batch"),
            priority=100,
            stopwaitsecs=30,
            stopasgroup=False,
            group="workers",
        )
        for i in range(1, settings.local.batch_workers + 1)
    ]


def run(settings: Settings, on_ready: Callable[[], None] = lambda: None) -> int:
    """Run the whole stack in the foreground until SIGINT, SIGTERM or ``inferq down``.

    ``on_ready`` runs once the API answers. Returns the exit status: 0 after a requested stop,
    1 when supervisord died on its own.
    """
    paths = StackPaths(settings.home.resolve())
    paths.home.mkdir(parents=True, exist_ok=True)
    claim(paths, settings.local.port)
    services: list[EmbeddedService] = []
    supervisor: subprocess.Popen[bytes] | None = None
    front = plan_front(settings, paths)
    targets = paths.home / "prometheus-targets.json"
    progs, metrics_ports = scrape_targets.assign_ports(
        programs(settings, front=front),
        LAUNCHER,
        targets,
        avoid=(settings.local.port, *(front.node_ports if front is not None else ())),
    )
    _on_stop_signals(_raise_stopped)
    try:
        # claim() found no live `inferq up` here, so a supervisord or nginx still running from
        # this home was left behind by one that crashed.
        stop_stale(paths.pidfile, "supervisord", timeout=stop_timeout(progs))
        stop_stale(paths.nginx_paths.pidfile, "nginx")
        if reachable(
            "127.0.0.1", settings.local.port
        ):  # else we would take its /readyz for our API's
            raise StackError(f"port {settings.local.port} is taken; choose another with --port")
        settings = settings.replace(home=paths.home)
        if front is not None:
            prepare_nginx(settings, paths, front)
        else:  # a config left by an earlier run would say nginx runs
            paths.nginx_paths.conf.unlink(missing_ok=True)
        settings = start_missing(settings, paths.home, services, announce=info)
        redis = plan_redis(paths.home / "redis") if needs_redis(settings) else None
        settings = own_redis(settings, paths, redis)
        write_services(paths, settings)
        prepare(settings, paths)
        api_ports = front.node_ports if front is not None else (settings.local.port,)
        scrape_targets.write_targets(targets, api_ports, progs, metrics_ports, LAUNCHER)
        if redis is not None:
            progs = [redis_program(redis), *progs]
        supervisor = start_supervisor(paths, progs, process_env(settings))
        if redis is not None:
            claim_embedded_redis(settings, redis, supervisor, paths)
        ready_url = f"http://127.0.0.1:{settings.local.port}/readyz{ready_scope(settings)}"
        return serve(ready_url, paths, supervisor, on_ready)
    except Stopped:
        return 0
    finally:
        # The shutdown is bounded; a second Ctrl-C must not cut it short and orphan processes.
        _on_stop_signals(signal.SIG_IGN)
        shutdown(supervisor, services, paths, stop_timeout(progs))


def own_redis(settings: Settings, paths: StackPaths, redis: RedisPlan | None) -> Settings:
    """Settings naming the embedded Redis (when ``redis``) and this home's instance id, which
    claims that Redis; a configured Redis that another stack claimed is refused here."""
    settings = settings.replace(
        **redis_changes(settings, redis.url if redis else None),
        instance=instance_id(paths),
        claim_redis=redis is not None,
    )
    if redis is None:
        from inferq.core.instance import check_at_start

        check_at_start(settings, wait_s=5.0)
    else:
        info(f"embedded Redis on {redis.url} (supervised; data in {redis.data_dir})")
    return settings


def instance_id(paths: StackPaths) -> str:
    """This home's id, made on its first start and kept in ``paths.instance``."""
    with contextlib.suppress(OSError):
        found = paths.instance.read_text().strip()
        if found:
            return found
    made = uuid.uuid4().hex
    paths.instance.write_text(made + "\n")
    return made


def redis_program(redis: RedisPlan) -> Program:
    """The embedded Redis: started first and stopped last, restarted whenever it dies."""
    return Program("redis", redis.argv, priority=10, stopwaitsecs=15)


def claim_embedded_redis(
    settings: Settings, redis: RedisPlan, supervisor: subprocess.Popen[bytes], paths: StackPaths
) -> None:
    """Wait until the embedded Redis answers, then write this stack's claim in it (the
    stack's processes also check it as they start)."""
    import redis as redis_client

    from inferq.core.instance import check_claim

    def supervisor_alive() -> None:
        if supervisor.poll() is not None:
            raise StackError(f"supervisord exited early; see {paths.logs / 'supervisord.log'}")

    wait_for_redis(redis.port, paths.logs / "redis.log", supervisor_alive)
    client = redis_client.Redis.from_url(redis.url, socket_timeout=5, socket_connect_timeout=5)
    try:
        check_claim(client, settings, redis.url)
    finally:
        client.close()


def prepare_nginx(settings: Settings, paths: StackPaths, front: Front) -> None:
    """Write nginx's config for the nodes of ``front`` and have nginx check it."""
    nginx.write_config(settings, paths.nginx_paths, front.node_ports)
    nginx.check_config(front.nginx_argv[0], paths.nginx_paths)
    ports = ", ".join(str(port) for port in front.node_ports)
    info(f"nginx on port {settings.local.port} in front of API nodes on 127.0.0.1 ports {ports}")


def prepare(settings: Settings, paths: StackPaths) -> None:
    """Migrate the database, make sure ``digits`` has an active version, and issue a dev key."""
    from db.migrate import upgrade
    from inferq.core.artifacts import open_store
    from inferq.domain.registration import legacy_sink

    info("migrating the database")
    upgrade(
        settings.require_direct_database_url(),
        artifact_sink=legacy_sink(open_store(settings)),
        job_partition_s=settings.scheduler.job_partition_s,
    )
    # Training is a worker's trade (torch): the launcher runs it as the CLI command would,
    # in a process of its own, and stays free of torch itself.
    subprocess.run(
        [sys.executable, "-m", "inferq", "models", "train", "digits", "--if-missing"],
        env=process_env(settings),
        stdout=subprocess.DEVNULL,  # the version number it prints is for scripts
        check=True,
    )
    ensure_dev_key(settings, paths.api_key)


def process_env(settings: Settings) -> dict[str, str]:
    """The environment of every process ``inferq up`` runs: its settings, and the directory
    it was started in importable, so a handler module there (``inferq init``) serves."""
    here = os.getcwd()
    paths = [here, *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, **settings.to_env(), "PYTHONPATH": os.pathsep.join(dict.fromkeys(paths))}


def ensure_dev_key(settings: Settings, path: Path) -> None:
    """Keep the key in ``path`` when the database knows it; otherwise issue one for tenant dev."""
    from db.engine import short_session
    from db.keys import create_key, ensure_tenant, find_key

    existing = path.read_text().strip() if path.exists() else ""
    with short_session(settings.require_database_url(), "inferq-up") as session:
        if existing and find_key(session, existing) is not None:
            return
        plaintext, _ = create_key(session, ensure_tenant(session, "dev"), DEV_SCOPES)
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(plaintext)
    info(f"created a development API key (tenant dev, scopes {', '.join(DEV_SCOPES)}) in {path}")


def ready_scope(settings: Settings) -> str:
    """What ``inferq up`` waits for: a job submitted now runs (``/readyz``), or, when no
    online worker starts with the stack (``--workers 0``, ``--autoscale 0:N``), the API alone."""
    bounds = settings.local.autoscale_bounds
    online = bounds[0] if bounds is not None else settings.local.workers
    return "" if online > 0 else "?scope=node"


def serve(
    ready_url: str,
    paths: StackPaths,
    supervisor: subprocess.Popen[bytes],
    on_ready: Callable[[], None],
) -> int:
    """Wait until ``ready_url`` answers 200, call ``on_ready``, then wait on supervisord
    (1 if it dies)."""
    wait_ready(ready_url, supervisor, paths)
    on_ready()
    status = supervisor.wait()
    info(f"error: supervisord exited with status {status}; see {paths.logs / 'supervisord.log'}")
    return 1


def wait_ready(url: str, supervisor: subprocess.Popen[bytes], paths: StackPaths) -> None:
    """Poll ``url`` (a ``/readyz``) until it answers 200; raise, with what it last said,
    when supervisord dies or time runs out, and at once when what answers is not inferq
    (another program bound the port after the stack found it free)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    last = "no answer"
    while time.monotonic() < deadline:
        if supervisor.poll() is not None:
            raise StackError(f"supervisord exited early; see {paths.logs / 'supervisord.log'}")
        try:
            # urlopen raises for any answer but 2xx (HTTPError and URLError are OSErrors).
            with urllib.request.urlopen(url, timeout=2) as answer:
                body = answer.read()
            if not is_readiness(body):
                raise StackError(
                    f"{url} answered, but not as inferq's API ({body[:200]!r}): another "
                    "program took the port; choose another with --port"
                )
            return
        except urllib.error.HTTPError as exc:
            last = exc.read().decode(errors="replace").strip()
        except OSError as exc:
            last = str(exc)
        time.sleep(0.25)
    log = paths.logs / "supervisord.log"
    raise StackError(
        f"inferq was not ready after {READY_TIMEOUT_S:.0f} s ({url} said {last[:300]}); see {log}"
    )


def is_readiness(body: bytes) -> bool:
    """Whether ``body`` is what the API's ``/readyz`` answers (api/routes/health.py)."""
    try:
        found = json.loads(body)
    except ValueError:
        return False
    return isinstance(found, dict) and isinstance(found.get("checks"), dict)


def shutdown(
    supervisor: subprocess.Popen[bytes] | None,
    services: Sequence[EmbeddedService],
    paths: StackPaths,
    timeout: float,
) -> None:
    """Stop supervisord (and with it every program), then the embedded servers, newest first."""
    if supervisor is not None and supervisor.poll() is None:
        info(f"stopping inferq (up to {timeout:.0f} s while workers finish their jobs)")
        stop_supervisor(supervisor, timeout)
    for service in reversed(services):
        try:
            service.stop()
        except Exception as exc:  # one stuck server must not keep the others running
            info(f"warning: could not stop embedded {service.name}: {exc}")
    release(paths)


def _raise_stopped(signum: int, frame: object) -> None:
    raise Stopped(signum)


def _on_stop_signals(handler: Callable[[int, Any], None] | signal.Handlers) -> None:
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)


def claim(paths: StackPaths, port: int) -> None:
    """Record this process in ``up.json``, or refuse when another ``inferq up`` uses this home."""
    running = read_running(paths)
    if running is not None:
        raise StackError(
            f"inferq is already running from {paths.home} at {running['url']} "
            f"(pid {running['pid']}); stop it with `inferq down`"
        )
    me = psutil.Process()
    record = {
        "url": f"http://127.0.0.1:{port}",
        "pid": me.pid,
        "started_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "create_time": me.create_time(),
    }
    paths.up_json.write_text(json.dumps(record, indent=2) + "\n")


def release(paths: StackPaths) -> None:
    """Remove ``up.json`` (and the services' addresses) when it is this process's."""
    with contextlib.suppress(OSError, ValueError):
        if json.loads(paths.up_json.read_text()).get("pid") == os.getpid():
            paths.up_json.unlink()
            paths.services_json.unlink(missing_ok=True)


#: The settings ``inferq up`` writes for the CLI to find its stack.
SERVICE_FIELDS = ("database_url", "broker_url", "redis_url")


def write_services(paths: StackPaths, settings: Settings) -> None:
    """Record where this stack's Postgres, broker and Redis are, readable by the owner only:
    ``inferq keys``, ``inferq models``… run from the same directory read it (the URLs may
    hold passwords)."""
    record = {name: getattr(settings, name) for name in SERVICE_FIELDS}
    paths.services_json.unlink(missing_ok=True)
    fd = os.open(paths.services_json, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        json.dump(record, file, indent=2)


def running_services(home: Path) -> dict[str, str]:
    """The addresses a live ``inferq up`` in ``home`` recorded; empty when none runs."""
    paths = StackPaths(home.resolve())
    if read_running(paths) is None:
        return {}
    try:
        record = json.loads(paths.services_json.read_text())
    except (OSError, ValueError):
        return {}
    return {k: str(v) for k, v in record.items() if k in SERVICE_FIELDS and v}


def read_running(paths: StackPaths) -> dict[str, Any] | None:
    """The ``up.json`` record of a live ``inferq up``, or None (a stale record counts as none)."""
    try:
        record: dict[str, Any] = json.loads(paths.up_json.read_text())
        process = psutil.Process(int(record["pid"]))
        # A pid alone may have been reused since; its start time may not.
        same = abs(process.create_time() - float(record["create_time"])) < 1.0
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
    return record if same else None


def down(home: Path, timeout: float = DOWN_TIMEOUT_S) -> dict[str, Any] | None:
    """Ask the ``inferq up`` using ``home`` to stop, and wait until it has.

    Returns its ``up.json`` record, or None when nothing runs there.
    """
    paths = StackPaths(home.resolve())
    record = read_running(paths)
    if record is None:
        paths.up_json.unlink(missing_ok=True)
        return None
    process = psutil.Process(int(record["pid"]))
    with contextlib.suppress(psutil.NoSuchProcess):
        process.terminate()
    if not _gone_within(process, timeout):
        raise StackError(f"inferq up (pid {process.pid}) still runs after {timeout:.0f} s")
    return record


def _gone_within(process: psutil.Process, timeout: float) -> bool:
    # Not psutil's wait(): `up` is not our child, and once it exits it stays a zombie until its
    # parent (a shell, a test) reaps it; an exited process is what we wait for.
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if process.status() == psutil.STATUS_ZOMBIE:
                return True
        except psutil.NoSuchProcess:
            return True
        time.sleep(0.2)
    return False
