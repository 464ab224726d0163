"""Admission control at submit: a tenant's queued-job quota and each lane's backlog limit.

Both refuse fast instead of letting a queue grow without bound: a tenant over its quota gets
429 (its own doing), a lane over its backlog 503 (the service is saturated); both carry
``Retry-After``. The checks count, then insert, so concurrent submits may overshoot a limit
by at most the number of requests in flight: a quota, not a ledger.
"""

from __future__ import annotations

import uuid

from api.state import ApiState, TtlCache, app_cache
from db.engine import statement_connection
from db.quotas import queued_jobs_in_lane, queued_jobs_of_tenant
from inferq.core.errors import RateLimited, ServiceUnavailable

TENANT_RETRY_AFTER_S = 5
LANE_RETRY_AFTER_S = 10


def _backlogs(st: ApiState) -> TtlCache:
    # Per app: a lane's count is shared by its requests for admission_cache_s seconds.
    return app_cache("inferq.backlogs", st.settings.quotas.admission_cache_s)


def admit(st: ApiState, tenant_id: uuid.UUID, lane: str) -> None:
    """Raise when the tenant has too many queued jobs or ``lane`` is too backed up."""
    settings = st.settings
    quota = settings.quotas.tenant_max_queued
    if quota > 0:

        def tenant_count() -> int:
            with statement_connection(st.sessions) as conn:  # one round trip, no session
                return queued_jobs_of_tenant(conn, tenant_id, quota)

        # Shared for admission_cache_s like the lane counts: not a query on every submit.
        if (_backlogs(st).get(("tenant", tenant_id), tenant_count) or 0) >= quota:
            raise RateLimited(
                f"This tenant already has {quota} queued jobs, its limit; retry once some "
                "have started.",
                headers={"Retry-After": str(TENANT_RETRY_AFTER_S)},
            )
    limit = settings.quotas.lane_limits.get(lane, 0)
    if limit > 0:

        def count() -> int:
            with statement_connection(st.sessions) as conn:
                return queued_jobs_in_lane(conn, lane, limit)

        if (_backlogs(st).get(lane, count) or 0) >= limit:
            raise ServiceUnavailable(
                f"The {lane!r} lane has {limit} or more jobs waiting, its limit; nothing was "
                "queued. Retry later.",
                headers={"Retry-After": str(LANE_RETRY_AFTER_S)},
            )
