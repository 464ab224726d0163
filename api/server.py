"""Serving the API with gunicorn.

``gthread`` workers: a long-poll parks one thread (holding no database connection) while
the others keep answering, and nginx's upstream keep-alive is honoured.
"""

from __future__ import annotations

from typing import Any

from gunicorn.app.base import BaseApplication

from inferq.settings import Settings


class ApiServer(BaseApplication):  # type: ignore[misc]
    """gunicorn configured from settings instead of a config file."""

    def __init__(self, settings: Settings, bind: str) -> None:
        self.settings = settings
        self.options = {
            "bind": bind,
            "workers": settings.api_processes,
            "worker_class": "gthread",
            "threads": settings.api_threads,
            # A long-poll may legitimately hold a request for max_wait_s.
            "timeout": int(settings.max_wait_s) + 30,
            "graceful_timeout": int(settings.max_wait_s) + 5,
            "keepalive": 75,
            "accesslog": None,
            "errorlog": "-",
            "loglevel": settings.log_level.lower(),
            "proc_name": f"inferq-api {bind}",
        }
        super().__init__()

    def load_config(self) -> None:
        for key, value in self.options.items():
            self.cfg.set(key, value)

    def load(self) -> Any:
        from api.app import create_app

        return create_app(self.settings)


def serve(settings: Settings, host: str, port: int) -> None:
    """Run an API node in the foreground."""
    ApiServer(settings, f"{host}:{port}").run()
