"""SQLAlchemy 2 models: tenants, API keys, models and versions, jobs, batches, feedback,
activations, experiments and shadow results."""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Float,
    ForeignKey,
    Identity,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB, UUID
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from db.ids import new_id

JOB_STATUSES = ("queued", "running", "succeeded", "failed", "canceled")
TERMINAL_STATUSES = frozenset({"succeeded", "failed", "canceled"})
VERSION_STATUSES = ("candidate", "active", "retired")
WEBHOOK_STATUSES = ("pending", "delivered", "failed")
EXPERIMENT_MODES = ("ab", "shadow")
EXPERIMENT_STATUSES = ("running", "concluded", "stopped")
BATCH_STATUSES = ("running", "completed", "canceled")
TRAINING_STATUSES = ("queued", "running", "succeeded", "failed")


def _now() -> Mapped[dt.datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


class Base(DeclarativeBase):
    """Declarative base of every table."""

    type_annotation_map = {
        dict[str, Any]: JSONB(none_as_null=True),
        list[dict[str, Any]]: JSONB(none_as_null=True),
        uuid.UUID: UUID(as_uuid=True),
    }


class Tenant(Base):
    """A customer; jobs, keys and feedback belong to exactly one."""

    __tablename__ = "tenants"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    created_at: Mapped[dt.datetime] = _now()


class ApiKey(Base):
    """A bearer key; only its SHA-256 is stored, with a short prefix to recognise it by."""

    __tablename__ = "api_keys"

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    scopes: Mapped[list[str]] = mapped_column(ARRAY(String(16)))
    created_at: Mapped[dt.datetime] = _now()
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class WebhookSecret(Base):
    """A tenant's key for signing its webhooks (HMAC-SHA256); shown to its admin keys."""

    __tablename__ = "webhook_secrets"

    tenant_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("tenants.id", ondelete="CASCADE"), primary_key=True
    )
    secret: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = _now()


class Model(Base):
    """A named model served by a handler, with the JSON Schema its inputs must match."""

    __tablename__ = "models"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    #: The handler: an ``inferq.models`` entry point name or a ``module:Class`` path.
    handler: Mapped[str] = mapped_column(String(255))
    input_schema: Mapped[dict[str, Any]]
    #: JSON Schema of a feedback label (the true answer), when the model can learn from one.
    label_schema: Mapped[dict[str, Any] | None]
    config: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    #: The tensors a version's weights must hold (name -> dtype, shape), when the handler
    #: says: the API checks an upload against it without importing the handler.
    tensor_spec: Mapped[dict[str, Any] | None]
    active_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", use_alter=True, name="fk_models_active_version")
    )
    created_at: Mapped[dt.datetime] = _now()


class ModelVersion(Base):
    """One set of weights: where the artifact store keeps it (a file or a directory of
    files), its SHA-256, size and file list, and its holdout metrics."""

    __tablename__ = "model_versions"
    __table_args__ = (
        UniqueConstraint("model_id", "version"),
        CheckConstraint(f"status IN {VERSION_STATUSES}", name="model_version_status"),
        CheckConstraint("artifact_kind IN ('file', 'dir')", name="model_version_artifact_kind"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    artifact_uri: Mapped[str] = mapped_column(Text)
    artifact_kind: Mapped[str] = mapped_column(String(8), server_default="file")
    sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    #: ``[{"path", "sha256", "size"}, ...]``: the artifact's files.
    files: Mapped[list[dict[str, Any]]] = mapped_column(server_default=text("'[]'::jsonb"))
    metrics: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    status: Mapped[str] = mapped_column(String(16), server_default="candidate")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = _now()


class Job(Base):
    """One inference request and, once finished, its result.

    Partitioned by ``created_at`` (migration 0011): retention drops whole partitions. A job's
    id is a UUIDv7 carrying ``created_at`` (``db.ids``), so the id alone finds its partition.
    No foreign keys to or from ``jobs``: each would make dropping a partition lock the tables
    on the other side exclusively (a deadlock with every submit's key checks, seen under
    load), and a key check per insert costs the hot path. The API writes a job only with the
    ids it just read (tenant, model, version, experiment, batch), nothing deletes those rows,
    and the tables that hang off a job (``(job_id, job_created_at)``) go with its partition.
    """

    __tablename__ = "jobs"
    __table_args__ = (
        CheckConstraint(f"status IN {JOB_STATUSES}", name="job_status"),
        # Position in the queue and the reconciler's scans both walk queued jobs by age.
        Index(
            "ix_jobs_open",
            "lane",
            "created_at",
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
        Index("ix_jobs_completed_at", "completed_at"),
        Index("ix_jobs_tenant_created", "tenant_id", "created_at"),
        # The per-tenant quota counts a tenant's queued jobs on every submit.
        Index("ix_jobs_tenant_queued", "tenant_id", postgresql_where=text("status = 'queued'")),
        # The reconciler fails queued jobs past their Cancel-After deadline on every pass.
        Index(
            "ix_jobs_expiring",
            "expires_at",
            postgresql_where=text("status = 'queued' AND expires_at IS NOT NULL"),
        ),
        {"postgresql_partition_by": "RANGE (created_at)"},
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=new_id)
    # tenant, model, version, experiment and batch: ids without foreign keys (see above).
    tenant_id: Mapped[uuid.UUID]
    model_id: Mapped[int] = mapped_column(Integer)
    version_id: Mapped[int] = mapped_column(Integer)
    lane: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16), server_default="queued")
    input: Mapped[dict[str, Any]]
    output: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    user: Mapped[str | None] = mapped_column(String(256))
    #: The experiment that chose this job's version, and the arm the job landed in.
    experiment_id: Mapped[uuid.UUID | None]
    arm: Mapped[str | None] = mapped_column(String(32))
    cached: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    cancel_requested: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    worker: Mapped[str | None] = mapped_column(String(256))
    batch_size: Mapped[int | None] = mapped_column(Integer)
    predict_ms: Mapped[float | None] = mapped_column(Float)
    #: The time the id carries (part of the key: the partition a job lives in).
    created_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True), primary_key=True, server_default=func.now()
    )
    #: Last time a message for this job went to the broker; NULL when publishing failed.
    published_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: When the worker that ran it received its message (migration 0013); NULL before that.
    fetched_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: A job not started by then fails as ``expired`` instead of running late (Cancel-After).
    expires_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    #: The batch this job is an item of, and the item's place in the batch's input (from 0).
    batch_id: Mapped[uuid.UUID | None]
    batch_index: Mapped[int | None] = mapped_column(Integer)


class IdempotencyKey(Base):
    """An ``Idempotency-Key`` an API key sent, the request it stood for and the job it made."""

    __tablename__ = "idempotency_keys"
    key_id: Mapped[uuid.UUID] = mapped_column(
        ForeignKey("api_keys.id", ondelete="CASCADE"), primary_key=True
    )
    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    #: SHA-256 of the request (canonical JSON body and the headers that shape the job).
    fingerprint: Mapped[str] = mapped_column(String(64))
    job_id: Mapped[uuid.UUID] = mapped_column(index=True)
    #: The job's ``created_at`` (set by a trigger from the job id), by which retention deletes
    #: the record once its job is gone. Not partitioned: a key is unique over all time.
    job_created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), index=True)
    created_at: Mapped[dt.datetime] = _now()


class Webhook(Base):
    """Where to tell a job's tenant that the job finished, and how that went."""

    __tablename__ = "webhooks"
    __table_args__ = (
        CheckConstraint(f"status IN {WEBHOOK_STATUSES}", name="webhook_status"),
        {"postgresql_partition_by": "RANGE (job_created_at)"},
    )

    job_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    #: The job's ``created_at``: partitioned on it like ``jobs`` (migration 0012).
    job_created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    url: Mapped[str] = mapped_column(String(2048))
    status: Mapped[str] = mapped_column(String(16), server_default="pending")
    attempts: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    delivered_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = _now()


class WebhookDelivery(Base):
    """One attempt to deliver a job's webhook: the delivery log."""

    __tablename__ = "webhook_deliveries"
    __table_args__ = (
        Index("ix_webhook_deliveries_job", "job_id", "id"),
        {"postgresql_partition_by": "RANGE (job_created_at)"},
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    job_id: Mapped[uuid.UUID] = mapped_column()
    #: The job's ``created_at``: partitioned on it like ``jobs`` (migration 0012).
    job_created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    attempt: Mapped[int] = mapped_column(Integer)
    redelivery: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    ok: Mapped[bool] = mapped_column(Boolean)
    status_code: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(Text)
    duration_ms: Mapped[float | None] = mapped_column(Float)
    created_at: Mapped[dt.datetime] = _now()


class Feedback(Base):
    """What a user said about a job's output: its true label, a verdict, a score, a comment."""

    __tablename__ = "feedback"
    __table_args__ = ({"postgresql_partition_by": "RANGE (job_created_at)"},)

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    job_id: Mapped[uuid.UUID] = mapped_column(index=True)
    #: The job's ``created_at``: partitioned on it like ``jobs`` (migration 0012).
    job_created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    #: No foreign key (nor in the other tables partitioned with ``jobs``): dropping a
    #: partition would lock ``tenants`` exclusively (see Job).
    tenant_id: Mapped[uuid.UUID]
    label: Mapped[Any] = mapped_column(JSONB(none_as_null=True), nullable=True)
    correct: Mapped[bool | None] = mapped_column(Boolean)
    score: Mapped[float | None] = mapped_column(Float)
    comment: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = _now()


class ModelActivation(Base):
    """One time a version became a model's active one; rollback walks this history back."""

    __tablename__ = "model_activations"
    __table_args__ = (Index("ix_model_activations_model", "model_id", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id", ondelete="CASCADE"))
    previous_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    activated_by: Mapped[str] = mapped_column(String(128))
    reason: Mapped[str | None] = mapped_column(Text)
    activated_at: Mapped[dt.datetime] = _now()
    #: Set when a rollback undid this activation; rollback skips undone ones.
    rolled_back_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    rolled_back_by: Mapped[str | None] = mapped_column(String(128))


class Experiment(Base):
    """An A/B split or a shadow run over versions of one model, and how it ended."""

    __tablename__ = "experiments"
    __table_args__ = (
        CheckConstraint(f"mode IN {EXPERIMENT_MODES}", name="experiment_mode"),
        CheckConstraint(f"status IN {EXPERIMENT_STATUSES}", name="experiment_status"),
        # At most one running experiment per model: assignment must be unambiguous.
        Index(
            "ix_experiments_one_running",
            "model_id",
            unique=True,
            postgresql_where=text("status = 'running'"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    name: Mapped[str | None] = mapped_column(String(128))
    mode: Mapped[str] = mapped_column(String(16))
    #: ``[{"name", "version", "version_id", "sha256", "weight", "role"}]``, in the given order.
    arms: Mapped[list[dict[str, Any]]] = mapped_column(JSONB(none_as_null=True))
    policy: Mapped[dict[str, Any]]
    status: Mapped[str] = mapped_column(String(16), server_default="running")
    created_by: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = _now()
    decided_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    decided_by: Mapped[str | None] = mapped_column(String(128))
    #: promoted | kept | winner | guard | inconclusive | manual
    decision: Mapped[str | None] = mapped_column(String(32))
    winner: Mapped[str | None] = mapped_column(String(32))
    reason: Mapped[str | None] = mapped_column(Text)


class ShadowResult(Base):
    """A shadow arm's output for a job; stored for comparison, never shown to the client."""

    __tablename__ = "shadow_results"
    __table_args__ = (
        CheckConstraint("status IN ('succeeded', 'failed')", name="shadow_result_status"),
        {"postgresql_partition_by": "RANGE (job_created_at)"},
    )

    job_id: Mapped[uuid.UUID] = mapped_column(primary_key=True)
    #: The job's ``created_at``: partitioned on it like ``jobs`` (migration 0012).
    job_created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True), primary_key=True)
    # version and experiment: ids without foreign keys (see Feedback.tenant_id).
    version_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[uuid.UUID] = mapped_column(index=True)
    arm: Mapped[str] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    output: Mapped[dict[str, Any] | None]
    error: Mapped[dict[str, Any] | None]
    predict_ms: Mapped[float | None] = mapped_column(Float)
    worker: Mapped[str | None] = mapped_column(String(256))
    created_at: Mapped[dt.datetime] = _now()


# Reports group an experiment's jobs by arm.
Index(
    "ix_jobs_experiment",
    Job.experiment_id,
    Job.arm,
    postgresql_where=text("experiment_id IS NOT NULL"),
)


class Batch(Base):
    """Many inputs for one model version, submitted at once; each input is a job of the batch
    lane (``jobs.batch_id``, ``jobs.batch_index``), so workers, claims and retries apply as is."""

    __tablename__ = "batches"
    __table_args__ = (
        CheckConstraint(f"status IN {BATCH_STATUSES}", name="batch_status"),
        Index("ix_batches_tenant_created", "tenant_id", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    tenant_id: Mapped[uuid.UUID] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"))
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id"))
    version_id: Mapped[int] = mapped_column(ForeignKey("model_versions.id"))
    lane: Mapped[str] = mapped_column(String(16), server_default="batch")
    #: running until every item is terminal (then completed), or canceled.
    status: Mapped[str] = mapped_column(String(16), server_default="running")
    #: Items in the batch, and how many of them the result cache answered at submit.
    total: Mapped[int] = mapped_column(Integer)
    cached: Mapped[int] = mapped_column(Integer, server_default=text("0"))
    created_at: Mapped[dt.datetime] = _now()
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    canceled_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


# A batch's items in input order (results, progress). One job per item: the batch writes its
# items once, in one transaction (a unique index on a partitioned table needs created_at).
Index(
    "ix_jobs_batch_item",
    Job.batch_id,
    Job.batch_index,
    postgresql_where=text("batch_id IS NOT NULL"),
)


class TrainingRun(Base):
    """One retraining of a model: what started it, its progress, the data it saw, the
    candidate it registered with its metrics, the rollout applied, or why it failed."""

    __tablename__ = "training_runs"
    __table_args__ = (
        CheckConstraint(f"status IN {TRAINING_STATUSES}", name="training_run_status"),
        Index("ix_training_runs_model_created", "model_id", "created_at"),
        # At most one open run per model: a second beat, a drift trigger and an admin's
        # request at once start one training, not three.
        Index(
            "ix_training_runs_one_open",
            "model_id",
            unique=True,
            postgresql_where=text("status IN ('queued', 'running')"),
        ),
    )

    id: Mapped[uuid.UUID] = mapped_column(primary_key=True, default=uuid.uuid4)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    status: Mapped[str] = mapped_column(String(16), server_default="queued")
    #: manual | schedule | drift
    trigger: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str] = mapped_column(String(128))
    #: 0..1 and what it is doing now (loading data, training, evaluating, registering).
    progress: Mapped[float] = mapped_column(Float, server_default=text("0"))
    stage: Mapped[str | None] = mapped_column(String(64))
    base_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    candidate_version_id: Mapped[int | None] = mapped_column(
        ForeignKey("model_versions.id", ondelete="SET NULL")
    )
    #: Feedback examples trained on, and held back to evaluate on.
    feedback_train: Mapped[int | None] = mapped_column(Integer)
    feedback_eval: Mapped[int | None] = mapped_column(Integer)
    metrics: Mapped[dict[str, Any]] = mapped_column(server_default=text("'{}'::jsonb"))
    error: Mapped[str | None] = mapped_column(Text)
    #: pending | registered | experiment | promoted | held, and why.
    rollout: Mapped[str | None] = mapped_column(String(16))
    rollout_reason: Mapped[str | None] = mapped_column(Text)
    experiment_id: Mapped[uuid.UUID | None] = mapped_column(
        ForeignKey("experiments.id", ondelete="SET NULL")
    )
    created_at: Mapped[dt.datetime] = _now()
    started_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    completed_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    duration_s: Mapped[float | None] = mapped_column(Float)


class ScalingDecision(Base):
    """One autoscaler decision: the worker count it chose, why, and what it saw."""

    __tablename__ = "scaling_decisions"
    __table_args__ = (Index("ix_scaling_decisions_pool_at", "pool", "at"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = _now()
    #: The worker pool scaled (its lanes, e.g. "online") and the backend that scales it.
    pool: Mapped[str] = mapped_column(String(64))
    backend: Mapped[str] = mapped_column(String(32))
    current: Mapped[int] = mapped_column(Integer)
    desired: Mapped[int] = mapped_column(Integer)
    #: up | down | hold
    direction: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str] = mapped_column(Text)
    inputs: Mapped[dict[str, Any]]


class TrainingExample(Base):
    """A labelled job kept for retraining after retention dropped the job itself."""

    __tablename__ = "training_examples"
    __table_args__ = (Index("ix_training_examples_model", "model_id", "job_created_at"),)

    id: Mapped[int] = mapped_column(BigInteger, Identity(), primary_key=True)
    model_id: Mapped[int] = mapped_column(ForeignKey("models.id", ondelete="CASCADE"))
    version_id: Mapped[int] = mapped_column(Integer)
    job_id: Mapped[uuid.UUID] = mapped_column(unique=True)
    job_created_at: Mapped[dt.datetime] = mapped_column(DateTime(timezone=True))
    input: Mapped[dict[str, Any]]
    label: Mapped[Any] = mapped_column(JSONB(none_as_null=True))
    kept_at: Mapped[dt.datetime] = _now()


class Retention(Base):
    """One row: the oldest creation time ``jobs`` still holds (older jobs have expired)."""

    __tablename__ = "retention"
    __table_args__ = (CheckConstraint("id = 1", name="retention_one_row"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    horizon: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[dt.datetime] = _now()
