"""One JSON shape for every error: `{"error": "not_found", "message": "..."}`."""

from __future__ import annotations

import logging
from http import HTTPStatus
from typing import Any

from apiflask import APIFlask, HTTPError
from sqlalchemy.exc import DatabaseError
from werkzeug.exceptions import RequestEntityTooLarge

from encoder.preprocess import ImageDecodeError, ImageTooLargeError
from indexer.damage import IndexDamageError, as_damage
from indexer.filters import FilterError
from indexer.products import BadCursorError
from search_api.limits import FormLimitError

logger = logging.getLogger(__name__)

ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "error": {"type": "string", "description": "Machine-readable kind, e.g. `not_found`."},
        "message": {"type": "string", "description": "What went wrong, for people."},
        "detail": {"type": "object", "description": "Per-field problems (validation errors only)."},
        "line": {"type": "integer", "nullable": True, "description": "bad_filter: where the problem is."},
        "column": {"type": "integer", "nullable": True},
        "caret": {
            "type": "string",
            "nullable": True,
            "description": "bad_filter: the line, ^ under the problem.",
        },
        "known_names": {
            "type": "array",
            "nullable": True,
            "items": {"type": "string"},
            "description": "bad_filter, unknown name: the names a filter can use.",
        },
    },
    "required": ["error", "message"],
}


class NotReadyError(RuntimeError):
    """No index is loaded (none published yet, or it could not be opened)."""

    status = 503


def error_slug(status: int) -> str:
    """`404` -> `not_found`."""
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "error"
    return phrase.lower().replace(" ", "_").replace("-", "_")


def error_body(error: HTTPError) -> tuple[dict, int, dict]:
    """APIFlask error processor: every HTTP error (ours, werkzeug's, validation) in one shape."""
    body: dict[str, Any] = {"error": error_slug(error.status_code), "message": error.message}
    if error.detail:
        body["detail"] = error.detail
        body["message"] = "; ".join(_flatten(error.detail)) or error.message
    if error.status_code >= 500:
        logger.error("%s %s", error.status_code, error.message)
    return body, error.status_code, error.headers


def _flatten(detail: dict, prefix: str = "") -> list[str]:
    """{"query": {"k": ["Too big."]}} -> ["k: Too big."] (the location is implied)."""
    out: list[str] = []
    for key, value in detail.items():
        name = key if prefix or key not in ("query", "files", "form", "json") else ""
        name = f"{prefix}.{name}" if prefix and name else name or prefix
        if isinstance(value, dict):
            out.extend(_flatten(value, name))
        else:
            texts = value if isinstance(value, list) else [value]
            out.extend(f"{name}: {t}" if name else str(t) for t in texts)
    return out


def init_app(app: APIFlask) -> None:
    """Install the error processor and map library exceptions to HTTP statuses."""
    app.config["HTTP_ERROR_SCHEMA"] = ERROR_SCHEMA
    app.config["VALIDATION_ERROR_SCHEMA"] = ERROR_SCHEMA
    app.error_processor(error_body)

    @app.errorhandler(ImageDecodeError)
    @app.errorhandler(ImageTooLargeError)
    @app.errorhandler(NotReadyError)
    def handle_known(e: Exception):
        return app.error_callback(HTTPError(e.status, str(e)))

    @app.errorhandler(IndexDamageError)
    @app.errorhandler(DatabaseError)
    def handle_damage(e: Exception):
        damage = as_damage(e)
        if damage is None:  # another database failure: a plain 500, logged
            logger.exception("database error")
            return app.error_callback(HTTPError(500, "internal error reading the index catalog"))
        shown = type(damage)(damage.problem, "INDEX", damage.file)
        logger.error("index damaged: %s", damage)
        return app.error_callback(HTTPError(503, f"the index is damaged: {shown}"))

    @app.errorhandler(FilterError)
    def handle_bad_filter(e: FilterError):
        body = {"error": "bad_filter", "message": str(e), **e.as_dict()}
        return body, 400

    @app.errorhandler(BadCursorError)
    def handle_bad_cursor(e: BadCursorError):
        return {"error": "bad_cursor", "message": str(e)}, 400

    @app.errorhandler(RequestEntityTooLarge)
    def handle_too_large(e: RequestEntityTooLarge):
        limit = app.config.get("MAX_CONTENT_LENGTH")
        if isinstance(e, FormLimitError):  # a form limit, not the body size
            message = e.description
        elif limit:
            message = f"request body is over the limit of {limit:,} bytes"
        else:
            message = "request body too large"
        return app.error_callback(HTTPError(413, message))
