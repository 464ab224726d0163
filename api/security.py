"""Hardening hooks of the app: per-key rate-limit headers, webhook endpoints, the spec."""

from __future__ import annotations

from flask import Flask

from api import ratelimit
from api.routes import docs
from api.routes import webhooks as webhook_routes


def init_app(app: Flask) -> None:
    """Register the security hooks and blueprints on ``app``."""
    ratelimit.init_app(app)
    app.register_blueprint(webhook_routes.bp)
    docs.init_app(app)
