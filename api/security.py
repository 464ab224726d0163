"""Hardening hooks of the app: per-key rate-limit headers, webhook endpoints, the spec."""

from __future__ import annotations

from flask import Flask, request

from api import ratelimit
from api.routes import docs
from api.routes import webhooks as webhook_routes
from inferq.errors import BadRequest


def init_app(app: Flask) -> None:
    """Register the security hooks and blueprints on ``app``."""
    app.before_request(_refuse_unstorable_urls)
    ratelimit.init_app(app)
    app.register_blueprint(webhook_routes.bp)
    docs.init_app(app)


def _refuse_unstorable_urls() -> None:
    """A NUL (``%00``) in the path or the query reaches no resource and would only reach
    Postgres, which refuses it: answer 400 before any handler sees it."""
    if "\x00" in request.path or any(
        "\x00" in key or "\x00" in value for key, value in request.args.items(multi=True)
    ):
        raise BadRequest("The URL holds a NUL character (%00).")
