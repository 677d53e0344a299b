"""Access control: which scope each endpoint needs, and the `Authorization: Bearer KEY` check.

Secure by default: every endpoint whose method is not GET/HEAD/OPTIONS needs a write key unless
its view is marked a read (`@auth.reads`, e.g. POST /v1/search); GET/HEAD endpoints are reads
unless marked `@auth.writes`.
Reads need a read (or write) key when REQUIRE_READ_KEY is set, and are open otherwise. Public
(`@auth.public`, or in PUBLIC_ENDPOINTS): health checks, the page and its files, the API docs.

- no key where one is needed: 401 `WWW-Authenticate: Bearer realm="imgrec"`
- a malformed, unknown or revoked key: 401 `error="invalid_token"` (RFC 6750: the credential is
  not valid, get another; a 403 would say "this key is fine but may not do that")
- a read key on a write endpoint: 403 `error="insufficient_scope"`
A key sent to an open read is checked all the same (a broken key is never silently ignored).

    @bp.post("/v1/items")          # a write: no decorator needed
    @bp.post("/v1/search")
    @auth.reads                    # a POST that only reads
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Literal

from apiflask import APIFlask, abort
from flask import current_app, g, request
from prometheus_client import Counter

from search_api.keys import InvalidKeyError, KeyInfo, KeyStore

Scope = Literal["public", "read", "write"]
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# Endpoints of other packages (static files, the OpenAPI document and its UI): no data in them.
PUBLIC_ENDPOINTS = frozenset(
    {"static", "openapi.spec", "openapi.docs", "openapi.swagger_ui_oauth_redirect", "apidocs.static"}
)
REALM = 'Bearer realm="imgrec"'


def _mark(view: Callable, scope: Scope) -> Callable:
    view._imgrec_scope = scope  # type: ignore[attr-defined]
    return view


def reads(view: Callable) -> Callable:
    """Mark a view that changes nothing (e.g. a POST search) as a read. Place it right under the route."""
    return _mark(view, "read")


def writes(view: Callable) -> Callable:
    """Mark a GET view that needs the write scope (e.g. the status of a write job)."""
    return _mark(view, "write")


def public(view: Callable) -> Callable:
    """Mark a view that needs no key ever (health checks). Place it right under the route."""
    return _mark(view, "public")


def required_scope(app: APIFlask, endpoint: str | None, method: str) -> Scope:
    """The scope a request to `endpoint` with `method` needs (before REQUIRE_READ_KEY is applied)."""
    if endpoint is None or endpoint in PUBLIC_ENDPOINTS:
        return "public"  # None: no route matched (404/405 follow)
    view = app.view_functions.get(endpoint)
    marked = getattr(view, "_imgrec_scope", None)
    if marked is not None:
        return marked
    return "read" if method in SAFE_METHODS else "write"


def current_key() -> KeyInfo | None:
    """The key of this request (None: anonymous)."""
    return g.get("imgrec_key")


def _bearer_token() -> str:
    """The token of `Authorization: Bearer TOKEN`.

    :raise 401: another scheme, or no token.
    """
    scheme, _, token = request.headers.get("Authorization", "").strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        _unauthorized("send the API key as `Authorization: Bearer KEY`", "invalid_request")
    return token


def _unauthorized(message: str, error: str | None = None) -> None:
    challenge = f'{REALM}, error="{error}"' if error else REALM
    abort(401, message, headers={"WWW-Authenticate": challenge})


def check_access() -> None:
    """before_request: the request carries a key with the scope its endpoint needs (or needs none).

    :raise 401: no key where one is needed, or a key that is not valid.
    :raise 403: a read key on a write endpoint.
    """
    g.imgrec_key = None
    if request.method == "OPTIONS":  # CORS preflights and Allow: never need a key
        return
    app: APIFlask = current_app  # type: ignore[assignment]
    needed = required_scope(app, request.endpoint, request.method)
    if needed == "public":
        return
    if "Authorization" not in request.headers:
        if needed == "write":
            _unauthorized("this endpoint needs an API key with the write scope: `Authorization: Bearer KEY`")
        if app.config["REQUIRE_READ_KEY"]:
            _unauthorized("this server needs an API key for reads too: `Authorization: Bearer KEY`")
        return
    try:
        key = app.extensions["imgrec.keys"].authenticate(_bearer_token())
    except InvalidKeyError as e:
        _unauthorized(str(e), "invalid_token")
    if not key.allows(needed):
        abort(
            403,
            f"the API key {key.name!r} has the {key.scope} scope; this endpoint needs {needed}",
            headers={"WWW-Authenticate": f'{REALM}, error="insufficient_scope", scope="{needed}"'},
        )
    g.imgrec_key = key


SCHEME = "bearerKey"
_ERROR = {"application/json": {"schema": {"$ref": "#/components/schemas/HTTPError"}}}
_SCOPE_TEXT = {
    "write": "Needs an API key with the write scope.",
    "read": "Needs an API key (read or write scope).",
    "open": "Open: no key needed (a key sent is checked, and counts for rate limits).",
}


def document_security(app: APIFlask, spec: dict[str, Any]) -> dict[str, Any]:
    """Spec processor: the bearer scheme, and per operation its scope (`x-scope`), its `security`
    (optional for open reads) and the 401 / 403 / 429 it can answer."""
    spec.setdefault("components", {}).setdefault("securitySchemes", {})[SCHEME] = {
        "type": "http",
        "scheme": "bearer",
        "description": "An imgrec API key (`imgrec keys create NAME --scope read|write`): "
        "`Authorization: Bearer imgrec_r_...`. Scopes: read (searches, items), write (also changes).",
    }
    limited = bool(app.config["RATE_LIMIT_ENABLED"])
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        for method in rule.methods or ():
            operation = spec.get("paths", {}).get(path, {}).get(method.lower())
            if operation is None:
                continue
            scope = required_scope(app, rule.endpoint, method)
            if scope == "public":
                operation["security"] = []
                operation["x-scope"] = "public"
                continue
            open_read = scope == "read" and not app.config["REQUIRE_READ_KEY"]
            operation["x-scope"] = scope
            operation["security"] = [{}, {SCHEME: []}] if open_read else [{SCHEME: []}]
            note = _SCOPE_TEXT["open" if open_read else scope]
            operation["description"] = f"{operation.get('description', '')}\n\n{note}".strip()
            responses = operation["responses"]
            responses.setdefault(
                "401", {"description": "No key, or a key that is not valid.", "content": _ERROR}
            )
            if scope == "write":
                responses.setdefault(
                    "403", {"description": "A key without the write scope.", "content": _ERROR}
                )
            if limited:
                responses.setdefault(
                    "429", {"description": "Over the rate limit (`Retry-After`).", "content": _ERROR}
                )
    return spec


def init_app(app: APIFlask) -> None:
    """Check every request's key; count requests by key name (never the key) in /metrics; document
    the scheme and each operation's scope in the OpenAPI document."""
    previous = app.spec_callback
    app.spec_processor(lambda spec: document_security(app, previous(spec) if previous else spec))
    store = KeyStore(app.config["INDEX"], ttl=float(app.config["KEY_CACHE_SECONDS"]))
    app.extensions["imgrec.keys"] = store
    app.before_request(check_access)

    by_key = Counter(
        "imgrec_http_requests_by_key",
        "HTTP requests answered, by API key name (`anonymous`: none) and status.",
        ["key", "status"],
        registry=app.extensions["imgrec.metrics"].registry,
    )

    @app.after_request
    def count_by_key(response):  # noqa: ANN001, ANN202
        key = current_key()
        by_key.labels(key.name if key else "anonymous", str(response.status_code)).inc()
        return response
