"""``/openapi.json`` (the spec, built from the schemas requests are validated with) and
``/docs`` (Swagger UI, served from the assets the flask-swagger-ui package ships)."""

from __future__ import annotations

from flask import Blueprint, Response, jsonify
from flask_swagger_ui import get_swaggerui_blueprint

from api import openapi
from api.state import state

bp = Blueprint("docs", __name__)
#: Swagger UI on ``/docs``, reading this API's spec.
ui_bp = get_swaggerui_blueprint(
    "/docs",
    "/openapi.json",
    config={"app_name": "inferq API", "persistAuthorization": True},
    blueprint_name="docs_ui",
)


@bp.get("/openapi.json")
def spec() -> Response:
    """The OpenAPI 3.1 document of this API, with every model's input schema."""
    return jsonify(openapi.document(state()))
