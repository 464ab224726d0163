"""Typed settings, read once per process from ``INFERQ_*`` environment variables.

Every entry point (API node, worker, beat, CLI) builds one :class:`Settings` with
:meth:`Settings.from_env` and passes it down; nothing reads the environment anywhere else.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, get_type_hints

from inferq.errors import ConfigError

PREFIX = "INFERQ_"
LANES = ("online", "batch", "training", "webhooks", "maintenance")


@dataclasses.dataclass(frozen=True)
class Settings:
    """Everything a process of inferq needs to know, with development defaults."""

    env: str = "development"
    home: Path = Path("var")
    database_url: str | None = None
    broker_url: str | None = None
    redis_url: str | None = None
    #: Prefix of every queue name and Redis key, so several deployments (or test runs)
    #: can share one broker and one Redis.
    namespace: str = "inferq"
    log_level: str = "INFO"

    # API
    max_body_bytes: int = 1_048_576
    max_wait_s: float = 30.0
    api_threads: int = 32
    #: gunicorn worker processes per API node (threads share one GIL; processes do not).
    api_processes: int = 2
    publish_timeout_s: float = 2.0
    #: How long an API process trusts what it read about a model or a key (a revoked key
    #: or a promoted version takes effect within this many seconds).
    model_cache_s: float = 2.0
    auth_cache_s: float = 5.0

    # Batches (POST /v1/batches)
    #: An upload's limits: bytes (JSONL is streamed, never held whole) and items. nginx allows
    #: bodies this large on /v1/batches alone; everything else keeps ``max_body_bytes``.
    max_batch_bytes: int = 268_435_456
    max_batch_items: int = 1_000_000
    #: Job ids per batch-lane message: what a batch worker claims, predicts and stores in one
    #: go, and so at most what a killed batch worker leaves to be redone.
    batch_chunk_size: int = 256

    # Workers
    worker_lanes: str = "online"
    #: Dynamic batching (Triton's max_queue_delay): a worker runs what it has buffered once
    #: it holds max_batch_size messages or max_batch_delay_ms has passed. Models may set a
    #: smaller ``max_batch_size`` in their config; batch size 1 turns batching off.
    max_batch_size: int = 64
    max_batch_delay_ms: float = 20.0
    #: A buffered batch also goes as soon as no message arrived for this long, so light load
    #: is not held for max_batch_delay_ms (see workers/batching.py).
    batch_idle_gap_ms: float = 2.0
    #: Messages a worker process may hold unacked; at least a batch, so batches can fill.
    worker_prefetch: int = 128
    device: str = "auto"
    #: torch intra-op threads per worker process; 0 picks one per two cores.
    torch_threads: int = 0
    max_attempts: int = 3
    #: Redis transport only: an unacked message goes back to its queue after this long.
    #: Must exceed the longest a message waits in a worker's prefetch buffer plus the
    #: job time limit, or a live worker's messages get redelivered (harmless: claims are
    #: guarded, but wasted work).
    visibility_timeout_s: int = 300
    heartbeat_interval_s: float = 2.0
    heartbeat_ttl_s: float = 10.0
    #: A worker whose consumer loop has not run for this long (outside a batch) exits to be
    #: replaced: it silently stopped consuming (lost broker connection that never recovered).
    stall_exit_s: float = 60.0
    status_ttl_s: int = 86_400
    #: How long a result stays in the cache; 0 turns the cache off.
    cache_ttl_s: int = 3600

    # Scheduler
    reconcile_interval_s: float = 5.0
    #: A queued job whose message was published this long ago without being claimed is
    #: published again (its message may have been lost with a broker).
    stale_queued_s: float = 300.0
    #: A job running longer than this (its worker alive but stuck) is put back in the queue.
    job_time_limit_s: float = 300.0
    #: How often the scheduler checks running experiments (guard rails, significance).
    experiment_interval_s: float = 30.0

    # Retraining (scheduler/retraining.py, scheduler/rollout.py)
    #: Per model, when beat retrains it: cron (``digits=0 3 * * *``) or ``every Ns``; ``;``
    #: between models.
    retrain_schedule: str = ""
    #: Per model, what a trained candidate becomes: ``register``, ``promote:MARGIN``,
    #: ``ab:SHARE`` or ``shadow:SHARE`` (``digits=ab:0.2;other=promote:0.02``); default register.
    retrain_policy: str = ""
    #: Drift: retrain early when the active version's feedback accuracy over the window falls
    #: below this (0: off), or the mean input value moves by this fraction (0: off).
    drift_min_accuracy: float = 0.0
    drift_input_shift: float = 0.0
    drift_min_feedback: int = 50
    drift_window_s: float = 3600.0
    #: How often the scheduler checks for drift and rolls out finished runs.
    retrain_check_interval_s: float = 30.0
    #: An open training run older than this is failed (its worker died), so others may start.
    training_time_limit_s: float = 3600.0
    #: Only the beat holding this Redis lock sends scheduled tasks; it renews it at a third.
    beat_lock_ttl_s: float = 30.0

    # Observability
    #: Where a worker or the scheduler serves Prometheus metrics (``/metrics``); 0: nowhere.
    #: API nodes serve ``/metrics`` on their own port. ``inferq up`` gives each process one.
    metrics_port: int = 0
    metrics_host: str = "127.0.0.1"
    #: How often the scheduler measures queues, workers, dependencies and model quality.
    metrics_interval_s: float = 15.0
    #: Feedback newer than this counts towards a model's live accuracy.
    quality_window_s: float = 86_400.0
    #: Celery task events (task-sent from the API, task-received/started/succeeded from
    #: workers), what Flower and ``celery events`` read; off saves a broker message or so
    #: per job.
    task_events: bool = True

    # nginx in front of the API nodes (`inferq up`, compose): requests per second and burst
    # allowed per client address before it answers 429 with Retry-After.
    rate_limit_rps: int = 100
    rate_limit_burst: int = 200
    #: The nginx binary for `inferq up`: "auto" (PATH, then /usr/sbin), a path, or "off".
    nginx: str = "auto"

    # Local stack (`inferq up`)
    port: int = 8080
    api_nodes: int = 1
    workers: int = 1
    #: ``MIN:MAX``: instead of ``workers`` fixed workers, ``inferq up`` runs the autoscaler
    #: (local backend), which keeps between MIN and MAX workers as the queues call for.
    autoscale: str = ""
    #: Workers that consume only the batch lane, so batches never queue ahead of online jobs.
    batch_workers: int = 1

    # Quotas and admission control (429/503 with Retry-After instead of queueing forever)
    #: Per API key: a token bucket in Redis refilled at this many requests per second, holding
    #: at most ``key_rate_burst``; 0 turns it off.
    key_rate_per_s: float = 1000.0
    key_rate_burst: int = 2000
    #: Per tenant: jobs queued at once (not yet started); 0 turns it off.
    tenant_max_queued: int = 100_000
    #: Per lane: queued jobs in Postgres past which new jobs are refused with 503; 0 turns it
    #: off. ``lane_backlogs`` overrides it per lane: "online=5000,batch=200000".
    lane_max_backlog: int = 100_000
    lane_backlogs: str = ""
    #: How long an API process trusts a lane's backlog or a tenant's queued count (bounds the
    #: counting cost: one count per lane or tenant per process and period, not per submit).
    admission_cache_s: float = 1.0
    #: How long an Idempotency-Key is remembered (IETF draft / Stripe: 24 h).
    idempotency_ttl_s: int = 86_400

    # Webhooks
    #: Addresses the SSRF guard lets webhooks reach although they are loopback, private,
    #: link-local…: comma-separated IPs, CIDRs or host names ("127.0.0.1,10.1.0.0/16").
    webhook_allowlist: str = ""
    webhook_timeout_s: float = 5.0
    #: Tries per delivery; the n-th retry waits ``webhook_backoff_s * 2**n`` s (at most 1 h).
    webhook_max_attempts: int = 6
    webhook_backoff_s: float = 5.0

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Build settings from ``INFERQ_<FIELD>`` variables; ``overrides`` win over both."""
        environ = os.environ if environ is None else environ
        hints = get_type_hints(cls)
        values: dict[str, Any] = {}
        for field in dataclasses.fields(cls):
            raw = environ.get(PREFIX + field.name.upper())
            if raw is not None and raw != "":
                values[field.name] = _parse(field.name, hints[field.name], raw)
        values.update(overrides)
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise :class:`ConfigError` when a combination of values cannot work."""
        if self.env not in ("development", "production", "test"):
            raise ConfigError(
                f"INFERQ_ENV must be development, production or test, not {self.env!r}"
            )
        if self.env == "production" and not (self.database_url and self.broker_url):
            raise ConfigError("production needs INFERQ_DATABASE_URL and INFERQ_BROKER_URL")
        for lane in self.lanes:
            if lane not in LANES:
                raise ConfigError(f"unknown lane {lane!r} in INFERQ_WORKER_LANES; lanes: {LANES}")
        if self.max_batch_size < 1 or self.max_batch_delay_ms < 0:
            raise ConfigError("need INFERQ_MAX_BATCH_SIZE >= 1 and INFERQ_MAX_BATCH_DELAY_MS >= 0")
        if self.max_attempts < 1:
            raise ConfigError("INFERQ_MAX_ATTEMPTS must be at least 1")
        if min(self.max_batch_bytes, self.max_batch_items, self.batch_chunk_size) < 1:
            raise ConfigError(
                "need INFERQ_MAX_BATCH_BYTES, INFERQ_MAX_BATCH_ITEMS, INFERQ_BATCH_CHUNK_SIZE >= 1"
            )
        if self.experiment_interval_s <= 0:
            raise ConfigError("INFERQ_EXPERIMENT_INTERVAL_S must be more than 0")
        if self.metrics_interval_s <= 0 or not 0 <= self.metrics_port <= 65535:
            raise ConfigError(
                "need INFERQ_METRICS_INTERVAL_S > 0 and 0 <= INFERQ_METRICS_PORT <= 65535"
            )
        if self.rate_limit_rps < 1 or self.rate_limit_burst < 0:
            raise ConfigError("need INFERQ_RATE_LIMIT_RPS >= 1 and INFERQ_RATE_LIMIT_BURST >= 0")
        if self.key_rate_per_s < 0 or (self.key_rate_per_s and self.key_rate_burst < 1):
            raise ConfigError("need INFERQ_KEY_RATE_PER_S >= 0 and INFERQ_KEY_RATE_BURST >= 1")
        if self.webhook_max_attempts < 1 or self.webhook_timeout_s <= 0:
            raise ConfigError("need INFERQ_WEBHOOK_MAX_ATTEMPTS >= 1, INFERQ_WEBHOOK_TIMEOUT_S > 0")
        self.lane_limits  # noqa: B018 (raises ConfigError when malformed)
        self.autoscale_bounds  # noqa: B018 (raises ConfigError when malformed)

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

    @property
    def lanes(self) -> tuple[str, ...]:
        """The lanes this process's workers consume."""
        return tuple(lane.strip() for lane in self.worker_lanes.split(",") if lane.strip())

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
            raise ConfigError(
                "INFERQ_DATABASE_URL is not set (`inferq up` sets it for its processes)"
            )
        return self.database_url

    def require_broker_url(self) -> str:
        """The broker URL, or a clear error when it is not configured."""
        if not self.broker_url:
            raise ConfigError(
                "INFERQ_BROKER_URL is not set (`inferq up` sets it for its processes)"
            )
        return self.broker_url

    def to_env(self) -> dict[str, str]:
        """The ``INFERQ_*`` variables that rebuild these settings in a child process."""
        env = {}
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if value is not None:
                env[PREFIX + field.name.upper()] = str(value)
        return env


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
