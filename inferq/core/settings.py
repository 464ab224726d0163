"""Typed settings, read once per process from ``INFERQ_*`` environment variables.

Every entry point (API node, worker, beat, autoscaler, CLI) builds one :class:`Settings`
with :meth:`Settings.from_env` and passes it down; nothing reads the environment anywhere
else. Settings come in sections, one per part of the system that reads them
(``settings.api.max_wait_s``, ``settings.worker.max_batch_size``…); each field is the
variable ``INFERQ_<FIELD>``, whatever its section, so names are unique across sections.

README's settings table and ``deploy/compose.env.example`` are generated from this module
(``scripts/settings-docs``): the comment above a field is its documentation.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, get_type_hints

from inferq.core.errors import ConfigError

PREFIX = "INFERQ_"
LANES = ("online", "batch", "training", "webhooks", "maintenance")


@dataclasses.dataclass(frozen=True)
class ApiSettings:
    """API nodes (gunicorn + Flask)."""

    #: The largest request body, bytes (413 above it); nginx enforces the same limit.
    max_body_bytes: int = 1_048_576
    #: The longest ``Prefer: wait=N`` or ``?wait=N`` a request may ask for, seconds.
    max_wait_s: float = 30.0
    #: Connections one gunicorn process holds at once (gevent's ``worker_connections``):
    #: requests in flight, waiting long-polls and idle keep-alive connections from nginx
    #: together. A waiting long-poll costs a socket and a greenlet, not a thread; past this
    #: many, new connections wait in the listen backlog.
    api_connections: int = 5000
    #: gunicorn worker processes per API node (threads share one GIL; processes do not).
    api_processes: int = 2
    #: How long a publish to the broker may take before the job is left to the reconciler.
    publish_timeout_s: float = 2.0
    #: How long an API process trusts what it read about a model (a promoted version takes
    #: effect within this many seconds).
    model_cache_s: float = 2.0
    #: How long an API process trusts what it read about a key (a revoked key stops working
    #: within this many seconds).
    auth_cache_s: float = 5.0


@dataclasses.dataclass(frozen=True)
class DatabaseSettings:
    """Postgres connections: how many each process may open (summed in `inferq up`'s banner
    and docs/connections.md; `inferq db connections` sums them for any fleet)."""

    #: Connections each API process keeps, and the most it opens; its requests share them,
    #: holding one only for a query or a transaction (a waiting long-poll holds none).
    api_db_pool: int = 18
    #: How long an API request waits for a free pooled connection (requests beyond the pool
    #: queue for one) before it is answered 503 with ``Retry-After``.
    api_db_wait_s: float = 10.0
    #: Connections each worker process keeps (any lane).
    worker_db_pool: int = 2
    #: Connections the scheduler keeps (reconciler, experiment and retraining checks).
    scheduler_db_pool: int = 1
    #: Connections the autoscaler keeps.
    autoscaler_db_pool: int = 2
    #: How far a worker's, the scheduler's or the autoscaler's pool may grow past its size
    #: under load, as a share of that size (rounded up): 1.0 lets it double, 0 never opens
    #: more than the pool. An API process's pool never grows (connections.API_OVERFLOW).
    db_overflow: float = 1.0


@dataclasses.dataclass(frozen=True)
class BatchSettings:
    """Offline batches (``POST /v1/batches``)."""

    #: An upload's limit in bytes (JSONL is streamed, never held whole). nginx allows bodies
    #: this large on /v1/batches alone; everything else keeps ``max_body_bytes``.
    max_batch_bytes: int = 268_435_456
    #: An upload's limit in items.
    max_batch_items: int = 1_000_000
    #: Job ids per batch-lane message: what a batch worker claims, predicts and stores in one
    #: go, and so at most what a killed batch worker leaves to be redone.
    batch_chunk_size: int = 256


@dataclasses.dataclass(frozen=True)
class ArtifactSettings:
    """Model artifacts: where versions' weights are stored and cached."""

    #: The artifact store: a directory (``file:///srv/models`` or a plain path; a volume
    #: every worker shares in compose and Kubernetes) or ``s3://bucket/prefix``; unset,
    #: ``<INFERQ_HOME>/artifacts``. Postgres keeps only each version's URI, digest and files.
    artifact_store: str = ""
    #: S3-compatible servers (MinIO, Ceph…): the endpoint URL; unset, AWS S3. Credentials
    #: come from the usual ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY`` variables.
    s3_endpoint_url: str = ""
    #: The S3 region; unset, boto3's default.
    s3_region: str = ""
    #: Where a worker keeps the artifacts it fetched (reused across restarts); unset,
    #: ``<INFERQ_HOME>/artifact-cache``.
    artifact_cache_dir: str = ""
    #: The most bytes that cache holds; the least recently used artifacts go first.
    artifact_cache_bytes: int = 20 * 2**30
    #: The largest artifact an upload (``POST /v1/models/{name}/versions``) may carry.
    max_artifact_bytes: int = 16 * 2**30


@dataclasses.dataclass(frozen=True)
class WorkerSettings:
    """Worker processes (Celery, torch)."""

    #: The lanes a worker consumes, comma-separated (online, batch, training, webhooks).
    worker_lanes: str = "online"
    #: Dynamic batching (Triton's max_queue_delay): a worker runs what it has buffered once
    #: it holds this many jobs or ``max_batch_delay_ms`` has passed. Models may set a smaller
    #: ``max_batch_size`` in their config; 1 turns batching off.
    max_batch_size: int = 64
    #: The longest a job waits in a worker's buffer for batch-mates, milliseconds.
    max_batch_delay_ms: float = 20.0
    #: A buffered batch also goes as soon as no message arrived for this long, so light load
    #: is not held for max_batch_delay_ms (see workers/dynamic_batching.py).
    batch_idle_gap_ms: float = 2.0
    #: Messages a worker process may hold unacked; at least a batch, so batches can fill.
    worker_prefetch: int = 128
    #: ``auto`` (CUDA when present, else CPU), ``cpu`` or ``cuda[:n]``.
    device: str = "auto"
    #: torch intra-op threads per worker process; 0 picks one per two cores.
    torch_threads: int = 0
    #: Claims of one job before it fails as ``attempts-exhausted`` (a poison input).
    max_attempts: int = 3
    #: Redis transport only: an unacked message goes back to its queue after this long.
    #: Must exceed the longest a message waits in a worker's prefetch buffer plus the job
    #: time limit, or a live worker's messages get redelivered (harmless: claims are
    #: guarded, but wasted work).
    visibility_timeout_s: int = 300
    #: How often a worker writes its heartbeat to Redis, seconds.
    heartbeat_interval_s: float = 2.0
    #: How long a heartbeat lives: a worker silent this long counts as gone.
    heartbeat_ttl_s: float = 10.0
    #: A worker whose consumer loop has not run for this long (outside a batch) exits to be
    #: replaced: it silently stopped consuming (lost broker connection that never recovered).
    stall_exit_s: float = 60.0
    #: How long a job's status and completion keys live in Redis, seconds.
    status_ttl_s: int = 86_400
    #: How long a result stays in the result cache, seconds; 0 turns the cache off.
    cache_ttl_s: int = 3600

    @property
    def lanes(self) -> tuple[str, ...]:
        """The lanes this process's workers consume."""
        return tuple(lane.strip() for lane in self.worker_lanes.split(",") if lane.strip())


@dataclasses.dataclass(frozen=True)
class SchedulerSettings:
    """The scheduler (Celery beat, the reconciler, experiment checks)."""

    #: How often the reconciler looks for jobs to re-send or time out, seconds.
    reconcile_interval_s: float = 5.0
    #: A queued job whose message was published this long ago without being claimed is
    #: published again (its message may have been lost with a broker).
    stale_queued_s: float = 300.0
    #: A job running longer than this (its worker alive but stuck) is put back in the queue.
    job_time_limit_s: float = 300.0
    #: How often the scheduler checks running experiments (guard rails, significance).
    experiment_interval_s: float = 30.0
    #: Only the beat holding this Redis lock sends scheduled tasks; it renews it at a third.
    beat_lock_ttl_s: float = 30.0
    #: How long jobs are kept (``7d``, ``12h``, ``90m``, ``3600s``): older ones go with their
    #: whole partition, and asking for one answers 410 Gone. Labelled feedback is kept for
    #: retraining; a batch's items stay until the batch itself is this old.
    job_retention: str = "7d"
    #: The width of one partition of ``jobs`` (a day; shorter for a soak test).
    job_partition: str = "1d"
    #: How many partitions are made ahead of now.
    partitions_ahead: int = 3
    #: How often the scheduler enforces retention and makes partitions ahead, seconds.
    retention_interval_s: float = 300.0
    #: How often the scheduler looks for partitions of ``jobs`` that autovacuum does not
    #: vacuum (off on the server or on the table) and vacuums those with many dead rows,
    #: seconds; 0: never.
    vacuum_interval_s: float = 30.0

    @property
    def job_retention_s(self) -> float:
        """``job_retention`` in seconds."""
        return duration_s(self.job_retention, "INFERQ_JOB_RETENTION")

    @property
    def job_partition_s(self) -> float:
        """``job_partition`` in seconds."""
        return duration_s(self.job_partition, "INFERQ_JOB_PARTITION")


@dataclasses.dataclass(frozen=True)
class RetrainingSettings:
    """Retraining (scheduler/retraining.py, scheduler/rollout.py)."""

    #: Per model, when beat retrains it: cron (``digits=0 3 * * *``) or ``every Ns``; ``;``
    #: between models.
    retrain_schedule: str = ""
    #: Per model, what a trained candidate becomes: ``register``, ``promote:MARGIN``,
    #: ``ab:SHARE`` or ``shadow:SHARE`` (``digits=ab:0.2;other=promote:0.02``).
    retrain_policy: str = ""
    #: Drift: retrain early when the active version's feedback accuracy over the window falls
    #: below this (0: off).
    drift_min_accuracy: float = 0.0
    #: Drift: retrain early when the mean input value moves by this fraction (0: off).
    drift_input_shift: float = 0.0
    #: Feedback a model needs in the window before its accuracy counts as drift.
    drift_min_feedback: int = 50
    #: The window drift is measured over, seconds.
    drift_window_s: float = 3600.0
    #: How often the scheduler checks for drift and rolls out finished runs, seconds.
    retrain_check_interval_s: float = 30.0
    #: An open training run older than this is failed (its worker died), so others may start.
    training_time_limit_s: float = 3600.0


@dataclasses.dataclass(frozen=True)
class ObservabilitySettings:
    """Metrics and events."""

    #: Where a worker, the scheduler or the autoscaler serves Prometheus metrics
    #: (``/metrics``); 0: nowhere. API nodes serve ``/metrics`` on their own port.
    #: ``inferq up`` gives each process one.
    metrics_port: int = 0
    #: The address that metrics port listens on.
    metrics_host: str = "127.0.0.1"
    #: How often the scheduler measures queues, workers, dependencies and model quality.
    metrics_interval_s: float = 15.0
    #: Feedback newer than this counts towards a model's live accuracy, seconds.
    quality_window_s: float = 86_400.0
    #: Celery task events (task-sent from the API, task-received/started/succeeded from
    #: workers), what Flower and ``celery events`` read. Off by default, as in Celery: four
    #: broker messages per job that nothing else reads (BENCHMARKS.md).
    task_events: bool = False


@dataclasses.dataclass(frozen=True)
class AutoscalerSettings:
    """The autoscaler (``inferq autoscaler``); its command-line flags override these."""

    #: Where it scales: ``auto`` (kubernetes in a pod, compose next to a Docker socket, else
    #: local), ``local``, ``compose``, ``kubernetes`` or ``dry-run``.
    autoscaler_backend: str = "auto"
    #: The fewest workers it keeps (0: scale to zero).
    autoscaler_min_workers: int = 1
    #: The most workers it starts.
    autoscaler_max_workers: int = 4
    #: Seconds within which a backlog should drain.
    autoscaler_target_wait_s: float = 30.0
    #: Seconds between polls.
    autoscaler_poll_s: float = 5.0
    #: Seconds over which arrival and service rates are measured.
    autoscaler_window_s: float = 60.0
    #: Scale down only to the highest need of this many seconds.
    autoscaler_stabilization_s: float = 60.0
    #: No scale-down within this many seconds of the last change.
    autoscaler_cooldown_s: float = 30.0
    #: The most workers one decision adds or removes.
    autoscaler_max_step: int = 4
    #: Jobs that must wait before a pool at zero starts a worker.
    autoscaler_activation: int = 1
    #: compose: the Docker Engine API (http://); default, the Docker socket.
    autoscaler_docker_url: str = ""
    #: compose: the project; default, this container's.
    autoscaler_compose_project: str = ""
    #: compose: the service scaled.
    autoscaler_compose_service: str = "worker"
    #: kubernetes: the namespace; default, this pod's.
    autoscaler_k8s_namespace: str = ""
    #: kubernetes: the Deployment scaled.
    autoscaler_k8s_deployment: str = "inferq-worker"
    #: compose: seconds a stopping worker gets to drain before SIGKILL.
    autoscaler_grace_s: int = 60


@dataclasses.dataclass(frozen=True)
class QuotaSettings:
    """Quotas and admission control (429/503 with Retry-After instead of queueing forever)."""

    #: Per API key: a token bucket in Redis refilled at this many requests per second,
    #: holding at most ``key_rate_burst``; 0 turns it off.
    key_rate_per_s: float = 1000.0
    #: Per API key: the bucket's size.
    key_rate_burst: int = 2000
    #: Per tenant: jobs queued at once (not yet started); 0 turns it off.
    tenant_max_queued: int = 100_000
    #: Per lane: queued jobs in Postgres past which new jobs are refused with 503; 0 turns
    #: it off.
    lane_max_backlog: int = 100_000
    #: Per lane overrides of ``lane_max_backlog``: ``online=5000,batch=200000``.
    lane_backlogs: str = ""
    #: How long an API process trusts a lane's backlog or a tenant's queued count (bounds
    #: the counting cost: one count per lane or tenant per process and period).
    admission_cache_s: float = 1.0
    #: How long an Idempotency-Key is remembered, seconds (IETF draft / Stripe: 24 h).
    idempotency_ttl_s: int = 86_400

    @property
    def lane_limits(self) -> dict[str, int]:
        """The backlog limit of each lane (``lane_max_backlog`` unless ``lane_backlogs`` says)."""
        limits = dict.fromkeys(LANES, self.lane_max_backlog)
        for item in filter(None, (part.strip() for part in self.lane_backlogs.split(","))):
            lane, _, number = item.partition("=")
            if lane.strip() not in LANES or not number.strip().isdigit():
                raise ConfigError(f"INFERQ_LANE_BACKLOGS: {item!r} is not lane=N; lanes: {LANES}")
            limits[lane.strip()] = int(number)
        return limits


@dataclasses.dataclass(frozen=True)
class WebhookSettings:
    """Webhook deliveries."""

    #: Addresses the SSRF guard lets webhooks reach although they are loopback, private,
    #: link-local…: comma-separated IPs, CIDRs or host names (``127.0.0.1,10.1.0.0/16``).
    webhook_allowlist: str = ""
    #: How long one delivery attempt may take, seconds.
    webhook_timeout_s: float = 5.0
    #: Tries per delivery; the n-th retry waits ``webhook_backoff_s * 2**n`` s (at most 1 h).
    webhook_max_attempts: int = 6
    #: The first retry's wait, seconds.
    webhook_backoff_s: float = 5.0


@dataclasses.dataclass(frozen=True)
class FrontSettings:
    """nginx in front of the API nodes (``inferq up``, compose, Kubernetes)."""

    #: Requests per second allowed per client address before nginx answers 429.
    rate_limit_rps: int = 100
    #: The burst allowed per client address above that rate.
    rate_limit_burst: int = 200
    #: Batch and artifact uploads one client address may have open at once (more get 429).
    uploads_per_client: int = 8
    #: The nginx binary for ``inferq up``: ``auto`` (PATH, then /usr/sbin), a path, or ``off``.
    nginx: str = "auto"


@dataclasses.dataclass(frozen=True)
class LocalSettings:
    """The local stack (``inferq up``)."""

    #: The public port (nginx, or the one API node without it).
    port: int = 8080
    #: API nodes behind nginx.
    api_nodes: int = 1
    #: Workers for the online lane.
    workers: int = 1
    #: ``MIN:MAX``: instead of ``workers`` fixed workers, ``inferq up`` runs the autoscaler
    #: (local backend), which keeps between MIN and MAX workers as the queues call for.
    autoscale: str = ""
    #: Workers that consume only the batch lane, so batches never queue ahead of online jobs.
    batch_workers: int = 1

    @property
    def autoscale_bounds(self) -> tuple[int, int] | None:
        """``(min, max)`` workers from ``autoscale``, or None when it is off."""
        if not self.autoscale.strip():
            return None
        low, sep, high = self.autoscale.strip().partition(":")
        if not (sep and low.isdigit() and high.isdigit() and int(low) <= int(high) >= 1):
            raise ConfigError(f"INFERQ_AUTOSCALE must be MIN:MAX with MIN <= MAX, MAX >= 1, "
                              f"not {self.autoscale!r}")  # fmt: skip
        return int(low), int(high)


#: The sections of :class:`Settings`, by attribute name.
SECTIONS: dict[str, type] = {
    "api": ApiSettings,
    "database": DatabaseSettings,
    "batches": BatchSettings,
    "artifacts": ArtifactSettings,
    "worker": WorkerSettings,
    "scheduler": SchedulerSettings,
    "retraining": RetrainingSettings,
    "observability": ObservabilitySettings,
    "autoscaler": AutoscalerSettings,
    "quotas": QuotaSettings,
    "webhooks": WebhookSettings,
    "front": FrontSettings,
    "local": LocalSettings,
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a process of inferq needs to know, with development defaults."""

    #: ``development``, ``production`` (needs the database and broker URLs) or ``test``.
    env: str = "development"
    #: Where ``inferq up`` keeps its state: embedded databases, logs, keys.
    home: Path = Path("var")
    #: Postgres (``postgresql+psycopg2://…``); unset, ``inferq up`` starts an embedded one.
    database_url: str | None = None
    #: Postgres itself when ``database_url`` goes through PgBouncer (transaction pooling):
    #: migrations (``inferq db upgrade``) connect here; unset, ``database_url``.
    direct_database_url: str | None = None
    #: The broker (``redis://…`` or ``amqp://…``); unset, ``inferq up`` starts a Redis.
    broker_url: str | None = None
    #: Redis for status, signals and caches; default, the broker's when that is Redis.
    redis_url: str | None = None
    #: Prefix of every queue name and Redis key, so several deployments (or test runs)
    #: can share one broker and one Redis.
    namespace: str = "inferq"
    #: The stack this process belongs to: ``inferq up`` sets it to the id it keeps in
    #: ``INFERQ_HOME/instance``. A process with one refuses a Redis that another stack
    #: claimed (key ``<namespace>:instance``), naming both; empty: no check.
    instance: str = ""
    #: Whether this stack claims its Redis (``inferq up`` sets it for the Redis it runs
    #: itself): the claim is written again whenever it is missing (a restart that lost the
    #: data), so that other stacks keep refusing that Redis.
    claim_redis: bool = False
    #: Log level of every process (logs are JSON lines on stderr).
    log_level: str = "INFO"
    #: How often an API node writes out its buffered log lines (one per request); a warning
    #: or worse goes out at once. 0 writes every line as it comes (as the other processes do).
    log_flush_s: float = 1.0

    api: ApiSettings = dataclasses.field(default_factory=ApiSettings)
    database: DatabaseSettings = dataclasses.field(default_factory=DatabaseSettings)
    batches: BatchSettings = dataclasses.field(default_factory=BatchSettings)
    artifacts: ArtifactSettings = dataclasses.field(default_factory=ArtifactSettings)
    worker: WorkerSettings = dataclasses.field(default_factory=WorkerSettings)
    scheduler: SchedulerSettings = dataclasses.field(default_factory=SchedulerSettings)
    retraining: RetrainingSettings = dataclasses.field(default_factory=RetrainingSettings)
    observability: ObservabilitySettings = dataclasses.field(default_factory=ObservabilitySettings)
    autoscaler: AutoscalerSettings = dataclasses.field(default_factory=AutoscalerSettings)
    quotas: QuotaSettings = dataclasses.field(default_factory=QuotaSettings)
    webhooks: WebhookSettings = dataclasses.field(default_factory=WebhookSettings)
    front: FrontSettings = dataclasses.field(default_factory=FrontSettings)
    local: LocalSettings = dataclasses.field(default_factory=LocalSettings)

    @classmethod
    def of(cls, **values: Any) -> Settings:
        """Defaults with ``values`` (by field name, whatever the section) put in; no
        environment read, nothing validated. ``Settings.of(port=9000, workers=2)``."""
        return cls().replace(**values)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``INFERQ_<FIELD>`` variables; ``overrides`` win over both."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name, (_, owner) in FIELDS.items():
            raw = environ.get(PREFIX + name.upper())
            if raw is not None and raw != "":
                values[name] = _parse(name, _hints(owner)[name], raw)
        values.update(overrides)
        settings = cls.of(**values)
        settings.validate()
        return settings

    def replace(self, **values: Any) -> Settings:
        """A copy with ``values`` (by field name, whatever the section) changed."""
        top: dict[str, Any] = {}
        by_section: dict[str, dict[str, Any]] = {}
        for name, value in values.items():
            if name not in FIELDS:
                raise TypeError(f"Settings has no field {name!r}")
            section = FIELDS[name][0]
            if section is None:
                top[name] = value
            else:
                by_section.setdefault(section, {})[name] = value
        for section, changes in by_section.items():
            top[section] = dataclasses.replace(getattr(self, section), **changes)
        return dataclasses.replace(self, **top)

    def validate(self) -> None:
        """Raise :class:`ConfigError` when a combination of values cannot work."""
        if self.env not in ("development", "production", "test"):
            raise ConfigError(
                f"INFERQ_ENV must be development, production or test, not {self.env!r}"
            )
        if self.env == "production" and not (self.database_url and self.broker_url):
            raise ConfigError("production needs INFERQ_DATABASE_URL and INFERQ_BROKER_URL")
        worker, batches, obs = self.worker, self.batches, self.observability
        for lane in worker.lanes:
            if lane not in LANES:
                raise ConfigError(f"unknown lane {lane!r} in INFERQ_WORKER_LANES; lanes: {LANES}")
        if worker.max_batch_size < 1 or worker.max_batch_delay_ms < 0:
            raise ConfigError("need INFERQ_MAX_BATCH_SIZE >= 1 and INFERQ_MAX_BATCH_DELAY_MS >= 0")
        if worker.max_attempts < 1:
            raise ConfigError("INFERQ_MAX_ATTEMPTS must be at least 1")
        if min(batches.max_batch_bytes, batches.max_batch_items, batches.batch_chunk_size) < 1:
            raise ConfigError(
                "need INFERQ_MAX_BATCH_BYTES, INFERQ_MAX_BATCH_ITEMS, INFERQ_BATCH_CHUNK_SIZE >= 1"
            )
        if self.scheduler.experiment_interval_s <= 0:
            raise ConfigError("INFERQ_EXPERIMENT_INTERVAL_S must be more than 0")
        if obs.metrics_interval_s <= 0 or not 0 <= obs.metrics_port <= 65535:
            raise ConfigError(
                "need INFERQ_METRICS_INTERVAL_S > 0 and 0 <= INFERQ_METRICS_PORT <= 65535"
            )
        if self.front.rate_limit_rps < 1 or self.front.rate_limit_burst < 0:
            raise ConfigError("need INFERQ_RATE_LIMIT_RPS >= 1 and INFERQ_RATE_LIMIT_BURST >= 0")
        if self.front.uploads_per_client < 1:
            raise ConfigError("need INFERQ_UPLOADS_PER_CLIENT >= 1")
        quotas = self.quotas
        if quotas.key_rate_per_s < 0 or (quotas.key_rate_per_s and quotas.key_rate_burst < 1):
            raise ConfigError("need INFERQ_KEY_RATE_PER_S >= 0 and INFERQ_KEY_RATE_BURST >= 1")
        hooks = self.webhooks
        if hooks.webhook_max_attempts < 1 or hooks.webhook_timeout_s <= 0:
            raise ConfigError("need INFERQ_WEBHOOK_MAX_ATTEMPTS >= 1, INFERQ_WEBHOOK_TIMEOUT_S > 0")
        database = self.database
        pools = (database.worker_db_pool, database.scheduler_db_pool, database.autoscaler_db_pool)
        if min(database.api_db_pool, *pools) < 1 or database.db_overflow < 0:
            raise ConfigError("need every INFERQ_*_DB_POOL >= 1 and INFERQ_DB_OVERFLOW >= 0")
        if database.api_db_wait_s <= 0 or self.api.api_connections < 1:
            raise ConfigError("need INFERQ_API_DB_WAIT_S > 0 and INFERQ_API_CONNECTIONS >= 1")
        self.quotas.lane_limits  # noqa: B018 (raises ConfigError when malformed)
        self.scheduler.job_retention_s  # noqa: B018 (raises ConfigError when malformed)
        self.scheduler.job_partition_s  # noqa: B018 (raises ConfigError when malformed)
        self.local.autoscale_bounds  # noqa: B018 (raises ConfigError when malformed)

    @property
    def effective_redis_url(self) -> str:
        """Redis for status, signals and caches: its own URL, else the broker's when Redis."""
        if self.redis_url:
            return self.redis_url
        if self.broker_url and self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        raise ConfigError("set INFERQ_REDIS_URL (the broker is not Redis)")

    def require_database_url(self) -> str:
        """The database URL, or a clear error when it is not configured."""
        if not self.database_url:
            raise self._nothing_running("INFERQ_DATABASE_URL")
        return self.database_url

    def require_direct_database_url(self) -> str:
        """Postgres itself (bypassing PgBouncer), for migrations: ``direct_database_url``,
        else the database URL."""
        return self.direct_database_url or self.require_database_url()

    def require_broker_url(self) -> str:
        """The broker URL, or a clear error when it is not configured."""
        if not self.broker_url:
            raise self._nothing_running("INFERQ_BROKER_URL")
        return self.broker_url

    def _nothing_running(self, variable: str) -> ConfigError:
        """The error of a command that needs ``variable`` where it is unset and no ``inferq
        up`` runs from the home (absolute, and the files that would have told)."""
        home = Path(self.home).resolve()
        return ConfigError(
            f"{variable} is not set and no `inferq up` runs from {home} (INFERQ_HOME; looked "
            f"for {home / 'up.json'} and the {home / 'services.json'} it keeps): start one "
            f"there, or point INFERQ_HOME at the directory it runs from, or set {variable}"
        )

    @property
    def artifact_cache_path(self) -> Path:
        """Where this process caches fetched artifacts."""
        configured = self.artifacts.artifact_cache_dir
        return Path(configured) if configured else Path(self.home).resolve() / "artifact-cache"

    def values(self) -> Iterator[tuple[str, Any]]:
        """Every field's name and value, sections flattened."""
        for name, (section, _) in FIELDS.items():
            owner = self if section is None else getattr(self, section)
            yield name, getattr(owner, name)

    def to_env(self) -> dict[str, str]:
        """The ``INFERQ_*`` variables that rebuild these settings in a child process."""
        return {
            PREFIX + name.upper(): str(value) for name, value in self.values() if value is not None
        }


_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86_400}


def duration_s(text: str, variable: str) -> float:
    """Seconds in ``7d``, ``12h``, ``90m``, ``3600s`` or ``3600``; ConfigError otherwise."""
    raw = text.strip().lower()
    number, unit = (raw[:-1], raw[-1]) if raw[-1:] in _UNITS else (raw, "s")
    try:
        seconds = float(number) * _UNITS[unit]
    except ValueError:
        raise ConfigError(
            f"{variable}={text!r} is not a duration like 7d, 12h, 90m or 30s"
        ) from None
    if not seconds > 0:
        raise ConfigError(f"{variable} must be more than 0, not {text!r}")
    return seconds


def _fields() -> dict[str, tuple[str | None, type]]:
    """Every field name, with its section (None: top level) and the class that holds it."""
    found: dict[str, tuple[str | None, type]] = {}
    for field in dataclasses.fields(Settings):
        if field.name not in SECTIONS:
            found[field.name] = (None, Settings)
    for section, owner in SECTIONS.items():
        for field in dataclasses.fields(owner):
            if field.name in found:
                raise RuntimeError(f"settings field {field.name!r} is in two sections")
            found[field.name] = (section, owner)
    return found


def _hints(owner: type) -> dict[str, Any]:
    return get_type_hints(owner)


def _parse(name: str, kind: Any, raw: str) -> Any:
    text = str(kind)
    try:
        if kind is bool or text == "bool":
            if raw.lower() in ("1", "true", "yes", "on"):
                return True
            if raw.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError(raw)
        if kind is int:
            return int(raw)
        if kind is float:
            return float(raw)
        if kind is Path:
            return Path(raw)
    except ValueError as exc:
        raise ConfigError(f"{PREFIX}{name.upper()}={raw!r} is not a valid {kind.__name__}") from exc
    return raw


#: Every field: name -> (section or None, the dataclass holding it).
FIELDS = _fields()
