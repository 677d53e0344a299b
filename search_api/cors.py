"""CORS (Flask-Cors) for the origins listed in CORS_ORIGINS only; none by default.

A browser page served from a listed origin may call the API (preflights answered, the
`Authorization` header allowed, rate-limit headers readable); any other origin gets no
`Access-Control-Allow-Origin` and the browser keeps the answer from it. No wildcard: `*` is refused,
list the origins (scheme, host and port, e.g. `https://shop.example`).
"""

from __future__ import annotations

from apiflask import APIFlask
from flask_cors import CORS

ALLOWED_HEADERS = ["Authorization", "Content-Type", "Idempotency-Key"]
EXPOSED_HEADERS = ["Retry-After", "X-RateLimit-Limit", "X-RateLimit-Remaining", "X-RateLimit-Reset"]


def origins(value: object) -> list[str]:
    """CORS_ORIGINS as a list: a JSON list, or one comma- or space-separated string.

    :raise ValueError: a wildcard, or an origin that is not `scheme://host[:port]`.
    """
    items = value if isinstance(value, list | tuple) else str(value or "").replace(",", " ").split()
    out = []
    for origin in (str(o).strip().rstrip("/") for o in items):
        if "*" in origin:
            raise ValueError("IMGREC_CORS_ORIGINS: no wildcards; list each origin (https://shop.example)")
        scheme, sep, rest = origin.partition("://")
        if not sep or scheme not in ("http", "https") or not rest or "/" in rest:
            raise ValueError(f"IMGREC_CORS_ORIGINS: {origin!r} is not an origin like https://shop.example")
        out.append(origin)
    return out


def init_app(app: APIFlask) -> None:
    """Answer CORS for the listed origins only."""
    allowed = origins(app.config["CORS_ORIGINS"])
    app.config["CORS_ORIGINS"] = allowed
    if not allowed:
        return
    CORS(
        app,
        origins=allowed,
        allow_headers=ALLOWED_HEADERS,
        expose_headers=EXPOSED_HEADERS,
        methods=["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"],
        supports_credentials=False,  # keys travel in a header, never in cookies
        max_age=600,
    )
