"""The API process's kept views (api.services.recent): bounded in count and in time."""

from __future__ import annotations

import time
import uuid
from types import SimpleNamespace
from typing import Any

from api.services.recent import RecentViews


def view(status: str = "queued") -> Any:
    return SimpleNamespace(
        job=SimpleNamespace(id=uuid.uuid4(), tenant_id=uuid.uuid4(), status=status)
    )


def test_an_expired_view_goes_when_the_next_is_kept() -> None:
    """Catches: expired views, each holding its job's input, kept until the count is full."""
    views = RecentViews(keep_s=0.05, max_kept=1000)
    views.keep(view())
    time.sleep(0.1)
    fresh = view()
    views.keep(fresh)
    assert len(views) == 1
    assert views.take(fresh.job.id, fresh.job.tenant_id) is fresh


def test_the_oldest_go_past_the_count_and_finished_jobs_are_not_kept() -> None:
    views = RecentViews(keep_s=60, max_kept=2)
    first, second, third = view(), view(), view()
    for v in (first, second, third):
        views.keep(v)
    views.keep(view("succeeded"))
    assert len(views) == 2
    assert views.take(first.job.id, first.job.tenant_id) is None
    assert views.take(third.job.id, third.job.tenant_id) is third
