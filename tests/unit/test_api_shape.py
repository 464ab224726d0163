"""The shape of ``api/`` that the layout promises (ARCHITECTURE.md), enforced: one tuple of
blueprints registered in ``create_app``, one ``accept`` per resource, the HTTP plumbing only
in ``api/http/``."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

from flask import Blueprint

from api.app import BLUEPRINTS, create_app
from inferq.core.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
API = ROOT / "api"


def api_modules() -> dict[str, ast.Module]:
    return {
        str(path.relative_to(ROOT)): ast.parse(path.read_text())
        for path in sorted(API.rglob("*.py"))
    }


def test_every_blueprint_is_in_the_one_tuple_and_create_app_registers_exactly_it() -> None:
    """Catches: a blueprint defined under api/routes but left out of ``BLUEPRINTS`` (its
    routes 404), one registered twice, or one registered by another statement or module
    (tried: ``stats.bp`` removed from the tuple and registered after the loop)."""
    defined = [
        value
        for path in sorted((API / "routes").glob("*.py"))
        if path.name != "__init__.py"
        for value in vars(importlib.import_module(f"api.routes.{path.stem}")).values()
        if isinstance(value, Blueprint)
    ]
    assert len(set(map(id, BLUEPRINTS))) == len(BLUEPRINTS)
    assert {id(bp) for bp in defined} == {id(bp) for bp in BLUEPRINTS}
    settings = Settings.of(
        database_url="postgresql+psycopg2://nobody@127.0.0.1:1/none",
        broker_url="redis://127.0.0.1:1/0",
    )
    assert list(create_app(settings).blueprints.values()) == list(BLUEPRINTS)
    calls = [
        (path, node.lineno)
        for path, tree in api_modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.Attribute) and node.attr == "register_blueprint"
    ]
    assert len(calls) == 1 and calls[0][0] == "api/app.py", calls
    loops = [
        node
        for node in ast.walk(api_modules()["api/app.py"])
        if isinstance(node, ast.For) and ast.unparse(node.iter) == "BLUEPRINTS"
    ]
    assert [ast.unparse(loop.body[0]) for loop in loops] == ["app.register_blueprint(blueprint)"]


def test_one_accept_per_resource_and_only_in_services() -> None:
    """Catches: a second ``accept`` on a submit's path (the old ``intake.accept`` →
    ``jobs_service.accept``), e.g. a route or another service defining one (tried: a
    ``def accept`` added to api/routes/jobs.py)."""
    found = [
        path
        for path, tree in api_modules().items()
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "accept"
    ]
    assert sorted(found) == ["api/services/batches.py", "api/services/jobs.py"]


#: Flask's request hooks and error handlers: the HTTP plumbing that api/http/ holds.
HOOKS = {
    "before_request",
    "after_request",
    "teardown_request",
    "before_app_request",
    "after_app_request",
    "teardown_app_request",
    "errorhandler",
    "app_errorhandler",
    "register_error_handler",
}
#: Hooks outside api/http/, each on its own blueprint only.
HOOKS_ELSEWHERE = {
    ("api/routes/batches.py", "after_request"): "a refused JSONL upload is read to its end",
    ("api/routes/models.py", "after_request"): "a refused weights upload is read to its end",
}


def test_the_http_plumbing_lives_only_in_api_http() -> None:
    """Catches: a request hook or error handler hung on the app (or a blueprint) outside
    api/http/, an auth-style decorator (``functools.wraps``) or a read of the
    ``Authorization`` header outside api/http/auth.py (tried: an ``@bp.before_request`` in
    api/routes/jobs.py, and a ``from functools import wraps`` in api/services/jobs.py)."""
    hooks, wrappers, credentials = set(), set(), set()
    for path, tree in api_modules().items():
        if path.startswith("api/http/"):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr in HOOKS:
                hooks.add((path, node.attr))
            if isinstance(node, ast.ImportFrom | ast.Import) and any(
                alias.name in ("wraps", "functools") for alias in node.names
            ):
                wrappers.add(path)
            if isinstance(node, ast.Constant) and node.value == "Authorization":
                credentials.add(path)
    assert hooks == set(HOOKS_ELSEWHERE)
    assert wrappers == set()
    assert credentials == set()
