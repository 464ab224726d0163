"""The API process's kept views (api.services.recent): bounded in count and in time, and
each long-poll starts from a copy of its own."""

from __future__ import annotations

import time
import uuid

from api.services.recent import RecentViews
from db.jobs import JobView
from db.tables import Job


def view(status: str = "queued") -> JobView:
    job: Job = Job.__mapper__.class_manager.new_instance()
    job.__dict__.update(id=uuid.uuid4(), tenant_id=uuid.uuid4(), status=status, attempts=0)
    return JobView(job, "digits", 1, {7: 3})


def test_an_expired_view_goes_when_the_next_is_kept() -> None:
    """Catches: expired views, each holding its job's input, kept until the count is full."""
    views = RecentViews(keep_s=0.05, max_kept=1000)
    old = view()
    views.keep(old)
    time.sleep(0.1)
    assert views.take(old.job.id, old.job.tenant_id) is None
    fresh = view()
    views.keep(fresh)
    assert len(views) == 1
    taken = views.take(fresh.job.id, fresh.job.tenant_id)
    assert taken is not None and taken.job.id == fresh.job.id


def test_the_oldest_go_past_the_count_and_finished_jobs_are_not_kept() -> None:
    views = RecentViews(keep_s=60, max_kept=2)
    first, second, third = view(), view(), view()
    for v in (first, second, third):
        views.keep(v)
    views.keep(view("succeeded"))
    assert len(views) == 2
    assert views.take(first.job.id, first.job.tenant_id) is None
    taken = views.take(third.job.id, third.job.tenant_id)
    assert taken is not None and taken.job.id == third.job.id


def test_every_taker_gets_a_copy_of_its_own_and_only_the_jobs_tenant_gets_one() -> None:
    """Catches: one view handed to several waiters, each setting the fields of its answer
    on the same job (api.services.jobs.refresh), or a view kept for one taker only."""
    views = RecentViews(keep_s=60)
    kept = view()
    views.keep(kept)
    assert views.take(kept.job.id, uuid.uuid4()) is None
    one = views.take(kept.job.id, kept.job.tenant_id)
    two = views.take(kept.job.id, kept.job.tenant_id)
    assert one is not None and two is not None
    assert one.job is not two.job and one.job is not kept.job
    one.job.status, one.job.attempts = "running", 1
    assert (two.job.status, two.job.attempts) == ("queued", 0)
    assert (kept.job.status, kept.job.attempts) == ("queued", 0)
    assert (two.model, two.version, two.ahead) == ("digits", 1, {7: 3})
