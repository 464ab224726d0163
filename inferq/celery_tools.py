"""inferq's Celery app for Celery's own tools, configured from ``INFERQ_*`` variables.

    celery -A inferq.celery_tools flower          # Flower, on inferq's queues and event exchange
    celery -A inferq.celery_tools events          # the curses monitor

Events go to the deployment's own exchange (``<namespace>.events``), which tools built on
a bare ``--broker`` URL would not read; this module hands them the same configuration the
services use. It is an entry point for those tools only: building the app here, at import,
is what ``-A`` expects. Workers run with remote control off, so Flower's worker pages that
ask workers directly (inspect, rate limits) stay empty; tasks, their timings and worker
heartbeats come from events.
"""

from __future__ import annotations

from inferq.core.broker import make_celery
from inferq.core.settings import Settings

app = make_celery(Settings.from_env())
