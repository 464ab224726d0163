"""``/openapi.json`` (the spec, built from the schemas requests are validated with) and
``/docs`` (Swagger UI, served from the assets the flask-swagger-ui package ships)."""

from __future__ import annotations

from flask import Blueprint, Flask, Response, jsonify
from flask_swagger_ui import get_swaggerui_blueprint

from api import openapi
from api.state import state

bp = Blueprint("docs", __name__)


@bp.get("/openapi.json")
def spec() -> Response:
    """The OpenAPI 3.1 document of this API, with every model's input schema."""
    return jsonify(openapi.document(state()))


def init_app(app: Flask) -> None:
    """Serve the spec and the browsable docs."""
    app.register_blueprint(bp)
    app.register_blueprint(
        get_swaggerui_blueprint(
            "/docs",
            "/openapi.json",
            config={"app_name": "inferq API", "persistAuthorization": True},
            blueprint_name="docs_ui",
        )
    )
