"""The OpenAPI 3.1 document, built from the app's routes and the very schemas its views
validate with: ``SUBMIT_SCHEMA`` with each model's input schema from the registry,
``FEEDBACK_SCHEMA`` and the other request schemas the route modules define.

Every route under ``/v1`` is listed, also one this module has no details for: its scope
comes from :func:`api.http.auth.require`, and a generic body and responses stand in.
"""

from __future__ import annotations

import copy
import importlib
import re
from typing import Any

from flask import current_app
from werkzeug.routing import Rule

from api.openapi_schemas import ANY_OBJECT, COMPONENTS
from api.state import ApiState
from db.registry import list_models

TITLE = "inferq"
VERSION = "1"
ROUTE_PARAM = re.compile(r"<(?:(\w+)(?:\([^)]*\))?:)?(\w+)>")

#: Where each endpoint's request body schema lives: ``(module, attribute)``.
REQUEST_SCHEMAS: dict[str, tuple[str, str]] = {
    "jobs.submit": ("api.routes.jobs", "SUBMIT_SCHEMA"),
    "jobs.feedback": ("api.routes.jobs", "FEEDBACK_SCHEMA"),
    "models.promote_version": ("api.routes.models", "REASON_SCHEMA"),
    "models.create": ("api.routes.models", "MODEL_SCHEMA"),
    "experiments.create": ("api.routes.experiments", "CREATE_SCHEMA"),
    "experiments.stop": ("api.routes.experiments", "STOP_SCHEMA"),
}
#: Success responses by endpoint: status -> component name (None: any JSON object).
SUCCESS: dict[str, dict[str, str | None]] = {
    "jobs.submit": {"200": "Job", "202": "Job"},
    "jobs.get_job": {"200": "Job"},
    "jobs.cancel": {"200": "Job"},
    "jobs.feedback": {"201": "Feedback"},
    "models.index": {"200": "Models"},
    "models.show": {"200": "Model"},
    "models.create": {"200": "Model", "201": "Model"},
    "models.add_version": {"201": None},
    "webhooks.deliveries": {"200": "WebhookLog"},
    "webhooks.redeliver": {"202": "WebhookLog"},
    "webhooks.secret": {"200": "WebhookSecret"},
    "webhooks.rotate": {"200": "WebhookSecret"},
    "health.healthz": {"200": "Health"},
    "health.readyz": {"200": "Health", "503": "Health"},
}
#: Problems an endpoint can answer beyond those of authentication (401, 403, 429, 503).
PROBLEMS: dict[str, tuple[int, ...]] = {
    "jobs.submit": (400, 409, 413, 415, 422),
    "jobs.get_job": (400, 404, 410),
    "jobs.cancel": (400, 404, 409, 410),
    "jobs.feedback": (400, 404, 409, 410, 413, 415, 422),
    "models.index": (),
    "models.show": (404,),
    "models.create": (400, 409, 413, 415, 422),
    "models.add_version": (400, 404, 413, 415, 422),
    "webhooks.deliveries": (400, 404, 410),
    "webhooks.redeliver": (400, 404, 409, 410),
    "webhooks.secret": (),
    "webhooks.rotate": (),
}
UNKNOWN_PROBLEMS = (400, 404, 409, 410, 413, 415, 422)
AUTH_PROBLEMS = (401, 403, 429, 503)
PUBLIC = ("health.healthz", "health.readyz")

SUBMIT_HEADERS: list[dict[str, Any]] = [
    {
        "name": "Idempotency-Key",
        "in": "header",
        "description": "Same key and body within 24 h: the original job; another body: 422.",
        "schema": {"type": "string", "minLength": 1, "maxLength": 255},
    },
    {
        "name": "Prefer",
        "in": "header",
        "description": "`wait=N`: hold the answer up to N s (200 when the job finished); "
        "other preferences are ignored (RFC 7240).",
        "schema": {"type": "string"},
    },
    {
        "name": "Cancel-After",
        "in": "header",
        "description": "Seconds; a job not started by then fails as `expired`.",
        "schema": {"type": "string", "pattern": r"^[0-9]+(\.[0-9]+)?$", "maxLength": 20},
    },
]
WAIT_QUERY: dict[str, Any] = {
    "name": "wait",
    "in": "query",
    "description": "Long-poll: hold the answer until the job is terminal, at most N s (the "
    "answer to a wait that runs out arrives within N s: the wait ends up to 0.3 s early).",
    "schema": {"type": "number", "minimum": 0},
}

READY_SCOPE_QUERY: dict[str, Any] = {
    "name": "scope",
    "in": "query",
    "description": "`system` (the default): a job submitted now runs, so a worker consumes "
    "the online lane too. `node`: this node's own database, Redis and broker only (what "
    "a load balancer's probe asks).",
    "schema": {"type": "string", "enum": ["system", "node"]},
}


def document(st: ApiState) -> dict[str, Any]:
    """The OpenAPI document of the running app."""
    components = {name: copy.deepcopy(schema) for name, schema in COMPONENTS.items()}
    variants = submit_variants(st)
    components.update(variants)
    submit_body = (
        {"oneOf": [{"$ref": f"#/components/schemas/{name}"} for name in variants]}
        if variants
        else _schema_of("jobs.submit")
    )
    paths: dict[str, dict[str, Any]] = {}
    for rule in sorted(current_app.url_map.iter_rules(), key=lambda r: r.rule):
        if not _documented(rule):
            continue
        path, params = _path(rule)
        for method in sorted((rule.methods or set()) - {"HEAD", "OPTIONS"}):
            operation = _operation(rule, method, params, submit_body)
            paths.setdefault(path, {})[method.lower()] = operation
    return {
        "openapi": "3.1.0",
        "info": {
            "title": TITLE,
            "version": VERSION,
            "description": "Asynchronous PyTorch model serving. Errors are RFC 9457 problems.",
        },
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {
                "Problem": {
                    "description": "A problem (RFC 9457).",
                    "content": {
                        "application/problem+json": {
                            "schema": {"$ref": "#/components/schemas/Problem"}
                        }
                    },
                }
            },
        },
    }


def submit_variants(st: ApiState) -> dict[str, dict[str, Any]]:
    """``SubmitJob_<model>``: the submit schema with that model's input schema in place."""
    base = _schema_of("jobs.submit")
    with st.sessions() as session:
        models = list_models(session)
    variants = {}
    for model in models:
        if model.active_version_id is None:  # nothing serves it yet: a 409, not a variant
            continue
        schema = copy.deepcopy(base)
        schema["properties"]["model"] = {"const": model.name}
        schema["properties"]["input"] = {
            k: v for k, v in model.input_schema.items() if k != "$schema"
        }
        variants[f"SubmitJob_{model.name}"] = schema
    return variants


def _documented(rule: Rule) -> bool:
    return rule.rule.startswith("/v1/") or rule.endpoint in PUBLIC


def _path(rule: Rule) -> tuple[str, list[dict[str, Any]]]:
    params = []
    for converter, name in ROUTE_PARAM.findall(rule.rule):
        if converter == "int":
            schema: dict[str, Any] = {"type": "integer", "minimum": 0}
        elif name.endswith("_id"):
            schema = {"type": "string", "format": "uuid"}
        else:
            schema = {"type": "string", "minLength": 1, "maxLength": 64}
        params.append({"name": name, "in": "path", "required": True, "schema": schema})
    return ROUTE_PARAM.sub(lambda m: "{" + m.group(2) + "}", rule.rule), params


def _schema_of(endpoint: str) -> dict[str, Any]:
    module, attribute = REQUEST_SCHEMAS.get(endpoint, ("", ""))
    try:
        schema = getattr(importlib.import_module(module), attribute)
    except (ImportError, AttributeError, ValueError):
        return copy.deepcopy(ANY_OBJECT)
    return dict(copy.deepcopy(schema))


def _operation(
    rule: Rule, method: str, params: list[dict[str, Any]], submit_body: dict[str, Any]
) -> dict[str, Any]:
    endpoint = rule.endpoint
    view = current_app.view_functions[endpoint]
    scope = getattr(view, "required_scope", None)
    doc = (view.__doc__ or "").strip()
    operation: dict[str, Any] = {
        "operationId": endpoint.replace(".", "_"),
        "tags": [endpoint.split(".")[0]],
        "summary": doc.split("\n")[0][:120],
        "parameters": list(params),
        "responses": _responses(endpoint, scope),
    }
    if scope:
        operation["security"] = [{"bearer": []}]
        operation["description"] = f"Needs an API key with the `{scope}` scope."
    if endpoint == "jobs.submit":
        operation["parameters"] += SUBMIT_HEADERS
        operation["requestBody"] = _body(submit_body)
    elif endpoint == "jobs.get_job":
        operation["parameters"].append(WAIT_QUERY)
    elif endpoint == "health.readyz":
        operation["parameters"].append(READY_SCOPE_QUERY)
    elif endpoint == "models.add_version":
        operation["requestBody"] = ARTIFACT_BODY
    elif method == "POST" and endpoint in REQUEST_SCHEMAS:
        operation["requestBody"] = _body(_schema_of(endpoint))
    elif method in ("POST", "PUT", "PATCH") and endpoint not in SUCCESS:
        operation["requestBody"] = {**_body(copy.deepcopy(ANY_OBJECT)), "required": False}
    return operation


#: A version's artifact: one safetensors file, a directory as a tar, or what the store holds.
ARTIFACT_BODY: dict[str, Any] = {
    "required": True,
    "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        "application/x-tar": {"schema": {"type": "string", "format": "binary"}},
        "application/json": {
            "schema": {
                "type": "object",
                "additionalProperties": False,
                "required": ["uri"],
                "properties": {
                    "uri": {"type": "string", "minLength": 1, "maxLength": 2048},
                    "activate": {"type": "boolean"},
                },
            }
        },
    },
}


def _body(schema: dict[str, Any]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": schema}}}


def _responses(endpoint: str, scope: str | None) -> dict[str, Any]:
    responses: dict[str, Any] = {}
    for status, component in SUCCESS.get(endpoint, {"200": None, "201": None, "202": None}).items():
        schema = {"$ref": f"#/components/schemas/{component}"} if component else ANY_OBJECT
        responses[status] = {
            "description": "OK" if status.startswith("2") else "Unavailable",
            "content": {"application/json": {"schema": schema}},
        }
    problems = set(PROBLEMS.get(endpoint, UNKNOWN_PROBLEMS))
    if scope:
        problems |= set(AUTH_PROBLEMS)
    for code in sorted(problems):
        responses.setdefault(str(code), {"$ref": "#/components/responses/Problem"})
    return responses
