"""``GET /dashboard``: the operator's page, plain HTML, CSS and JavaScript from ``api/static``.

No build step and nothing from a CDN: the page draws its charts as inline SVG from
``GET /v1/stats``, which it calls with an operator key the operator pastes in (kept in the
tab's sessionStorage) or passes in the URL fragment (``/dashboard#key=…``; a fragment is
never sent to a server, and the page removes it from the address bar at once).
"""

from __future__ import annotations

from pathlib import Path

from flask import Blueprint, Response, send_from_directory

STATIC = Path(__file__).resolve().parent.parent / "static"

bp = Blueprint(
    "dashboard", __name__, static_folder=str(STATIC), static_url_path="/dashboard/static"
)

#: Only this origin's own files; the page needs nothing else.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)


@bp.get("/dashboard")
def page() -> Response:
    """The page itself; it holds no data until it fetches the stats."""
    response = send_from_directory(STATIC, "dashboard.html", max_age=0)
    response.headers["Content-Security-Policy"] = CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    response.headers["Referrer-Policy"] = "no-referrer"
    return response
