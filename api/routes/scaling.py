"""``GET /v1/scaling`` (operator): the autoscaler's view, from the decisions it records.

Each pool's latest decision carries what the autoscaler saw (per lane: ready on the broker,
queued and running in Postgres, arrival rate; service rate; live and busy workers), so every
API node answers the same without reaching into the broker or the scheduler.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from api.http.auth import require
from api.state import state
from db.scaling import recent_decisions
from inferq.core.status import live_workers

bp = Blueprint("scaling", __name__, url_prefix="/v1/scaling")

MAX_DECISIONS = 200


@bp.get("")
@require("operator")
def show() -> Response:
    """Pools (queues, depth, rates, workers current and desired) and recent decisions."""
    try:
        limit = max(1, min(MAX_DECISIONS, int(request.args.get("limit", 20))))
    except ValueError:
        limit = 20
    st = state()
    with st.sessions() as session:
        decisions = recent_decisions(session, limit)
    pools: dict[str, dict[str, Any]] = {}
    for d in decisions:
        if d["pool"] not in pools:
            inputs = d["inputs"] or {}
            pools[d["pool"]] = {
                "pool": d["pool"],
                "backend": d["backend"],
                "at": d["at"],
                "current": d["current"],
                "desired": d["desired"],
                "reason": d["reason"],
                "lanes": inputs.get("lanes", []),
                "service_rate": inputs.get("service_rate"),
                "busy_workers": inputs.get("busy_workers", []),
            }
    return jsonify(
        {
            "pools": list(pools.values()),
            "live_workers": sorted(live_workers(st.redis, st.settings)),
            "decisions": [{k: v for k, v in d.items() if k != "inputs"} for d in decisions],
        }
    )
