"""The response shapes of the API as JSON Schema (2020-12, as OpenAPI 3.1 uses)."""

from __future__ import annotations

from typing import Any

from db.tables import JOB_STATUSES

STRING_OR_NULL = {"type": ["string", "null"]}
TIME = {"type": "string", "format": "date-time"}
TIME_OR_NULL = {"type": ["string", "null"], "format": "date-time"}
NUMBER_OR_NULL = {"type": ["number", "null"]}
INTEGER_OR_NULL = {"type": ["integer", "null"]}

PROBLEM: dict[str, Any] = {
    "type": "object",
    "description": "An RFC 9457 problem; `errors` lists JSON pointers into the request body.",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["pointer", "detail"],
                "properties": {"pointer": {"type": "string"}, "detail": {"type": "string"}},
            },
        },
    },
}

JOB: dict[str, Any] = {
    "type": "object",
    "required": ["id", "model", "version", "status", "input", "created_at", "metrics"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "model": {"type": "string"},
        "version": {"type": "integer"},
        "status": {"enum": list(JOB_STATUSES)},
        "lane": {"type": "string"},
        "input": {"type": "object"},
        "output": {"type": ["object", "null"]},
        "error": {"type": ["object", "null"]},
        "user": STRING_OR_NULL,
        "cached": {"type": "boolean"},
        "attempts": {"type": "integer"},
        "created_at": TIME,
        "fetched_at": {
            **TIME_OR_NULL,
            "description": "When the worker that ran it received its message from the broker.",
        },
        "started_at": TIME_OR_NULL,
        "completed_at": TIME_OR_NULL,
        "expires_at": TIME_OR_NULL,
        "metrics": {
            "type": "object",
            "properties": {
                "queue_ms": NUMBER_OR_NULL,
                "predict_ms": NUMBER_OR_NULL,
                "batch_size": INTEGER_OR_NULL,
                "total_ms": NUMBER_OR_NULL,
            },
        },
        "worker": STRING_OR_NULL,
        "position": INTEGER_OR_NULL,
        "position_exact": {
            "type": "boolean",
            "description": "Whether position counts the jobs ahead (up to 1,000 of them) "
            "or estimates it from the lane's queue (deeper in a backlog).",
        },
        "eta_s": NUMBER_OR_NULL,
        "stuck": {
            "type": ["object", "null"],
            "description": "Why an open job is not moving: no-live-worker, "
            "workers-not-consuming, worker-lost, over-time-limit.",
            "properties": {"reason": {"type": "string"}, "detail": {"type": "string"}},
        },
        "cancel_requested": {"type": "boolean"},
    },
}

FEEDBACK: dict[str, Any] = {
    "type": "object",
    "required": ["id", "job_id"],
    "properties": {
        "id": {"type": "string", "format": "uuid"},
        "job_id": {"type": "string", "format": "uuid"},
        "correct": {"type": "boolean"},
        "score": {"type": "number"},
        "comment": {"type": "string"},
    },
}

MODEL: dict[str, Any] = {
    "type": "object",
    "required": ["name", "active_version", "input_schema", "versions"],
    "properties": {
        "name": {"type": "string"},
        "handler": {"type": "string"},
        "active_version": INTEGER_OR_NULL,
        "input_schema": {"type": "object"},
        "label_schema": {"type": ["object", "null"]},
        "config": {"type": "object"},
        "versions": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["version", "status", "sha256"],
                "properties": {
                    "version": {"type": "integer"},
                    "status": {"type": "string"},
                    "sha256": {"type": "string"},
                    "size_bytes": {"type": "integer"},
                    "metrics": {"type": "object"},
                    "created_at": TIME,
                },
            },
        },
    },
}

MODELS: dict[str, Any] = {
    "type": "object",
    "required": ["models"],
    "properties": {"models": {"type": "array", "items": {"$ref": "#/components/schemas/Model"}}},
}

WEBHOOK_LOG: dict[str, Any] = {
    "type": "object",
    "required": ["job_id", "url", "status", "attempts", "deliveries"],
    "properties": {
        "job_id": {"type": "string", "format": "uuid"},
        "url": STRING_OR_NULL,
        "status": {"enum": ["pending", "delivered", "failed", None]},
        "attempts": {"type": "integer"},
        "delivered_at": TIME_OR_NULL,
        "redelivery": {"type": "string"},
        "deliveries": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["attempt", "ok", "created_at"],
                "properties": {
                    "attempt": {"type": "integer"},
                    "redelivery": {"type": "boolean"},
                    "ok": {"type": "boolean"},
                    "status_code": INTEGER_OR_NULL,
                    "error": STRING_OR_NULL,
                    "duration_ms": NUMBER_OR_NULL,
                    "created_at": TIME,
                },
            },
        },
    },
}

WEBHOOK_SECRET: dict[str, Any] = {
    "type": "object",
    "required": ["secret", "algorithm"],
    "properties": {
        "secret": {"type": "string"},
        "created_at": TIME_OR_NULL,
        "algorithm": {"const": "HMAC-SHA256"},
        "signed_content": {"type": "string"},
        "headers": {"type": "array", "items": {"type": "string"}},
    },
}

HEALTH: dict[str, Any] = {
    "type": "object",
    "required": ["status"],
    "properties": {"status": {"type": "string"}, "checks": {"type": "object"}},
}

ANY_OBJECT: dict[str, Any] = {"type": "object"}

COMPONENTS: dict[str, dict[str, Any]] = {
    "Problem": PROBLEM,
    "Job": JOB,
    "Feedback": FEEDBACK,
    "Model": MODEL,
    "Models": MODELS,
    "WebhookLog": WEBHOOK_LOG,
    "WebhookSecret": WEBHOOK_SECRET,
    "Health": HEALTH,
}
