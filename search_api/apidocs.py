"""Browsable API docs at /docs with Swagger UI served from the `swagger-ui-bundle` package (no CDN)."""

from __future__ import annotations

from apiflask import APIFlask
from flask import Blueprint
from swagger_ui_bundle import swagger_ui_path

# Media types /v1/search accepts as a raw body (multipart is documented by the view's input).
RAW_IMAGE_TYPES = ("image/jpeg", "image/png", "image/webp", "image/gif", "image/bmp", "image/tiff")

bp = Blueprint("apidocs", __name__, static_folder=swagger_ui_path, static_url_path="/docs/assets")


# Answered by the app before any view runs (search_api.limits), so possible on every operation.
HEAD_ERRORS = {
    "414": "URL longer than the configured limit (MAX_URL_BYTES).",
    "431": "More header fields, or a longer one, than the configured limits (MAX_HEADERS, MAX_HEADER_BYTES).",
}


def complete_spec(app: APIFlask, spec: dict) -> dict:
    """Add what decorators cannot say: the configured k bound, raw image bodies for /v1/search, the
    URL and header limits of every operation."""
    error = {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPError"}}}
    for path, operations in spec.get("paths", {}).items():
        for operation in operations.values():
            for code, description in HEAD_ERRORS.items():
                operation["responses"].setdefault(code, {"description": description, "content": error})
            for param in operation.get("parameters", []):
                if param.get("name") == "k" and param.get("in") == "query":
                    param["schema"]["maximum"] = int(app.config["MAX_K"])
            body = operation.get("requestBody")
            if body and path.startswith("/v1/search"):
                body["required"] = True
            if path == "/v1/search" and body:
                for media_type in RAW_IMAGE_TYPES:
                    body["content"][media_type] = {"schema": {"type": "string", "format": "binary"}}
                body["description"] = (
                    "The query image: multipart form field `image`, or the raw image bytes as the body "
                    "with an image content type."
                )
    return spec


def init_app(app: APIFlask) -> None:
    """Serve Swagger UI's files locally and finish the OpenAPI document."""
    # Relative URLs: they resolve against /docs, also when the app is mounted under a prefix.
    app.config.update(
        DOCS_UI="swagger-ui",
        SWAGGER_UI_CSS="docs/assets/swagger-ui.css",
        SWAGGER_UI_BUNDLE_JS="docs/assets/swagger-ui-bundle.js",
        SWAGGER_UI_STANDALONE_PRESET_JS="docs/assets/swagger-ui-standalone-preset.js",
        DOCS_FAVICON="docs/assets/favicon-32x32.png",
    )
    app.register_blueprint(bp)
    app.spec_processor(lambda spec: complete_spec(app, spec))
