"""Per-key rate limits (Flask-Limiter): 429 JSON with `Retry-After` past the limit.

- A request with a key counts against its key's name (RATE_LIMIT_KEY, e.g. "600/minute");
  anonymous reads against the client's address (RATE_LIMIT_ANONYMOUS). Public endpoints (health
  checks, the page's files, the docs) and CORS preflights are not limited.
- Limits use the `limits` notation ("10/second;600/minute"); an empty value turns that limit off.
- RATE_LIMIT_STORAGE is a `limits` storage URI. The default, `memory://`, counts in each process:
  under gunicorn with N workers a client may get up to N times the limit (each worker counts what it
  answers). For one count across workers point it at a shared store (`redis://host:6379`).
- Behind a reverse proxy the client's address is the proxy's: PROXY_HOPS (the number of proxies
  that append to X-Forwarded-For, 1 with the compose nginx) makes it the real client's again.
  Never set it when clients reach the app directly: they could then pick their own address.
"""

from __future__ import annotations

from apiflask import APIFlask, HTTPError
from flask import current_app, request
from flask_limiter import Limiter, RateLimitExceeded
from werkzeug.middleware.proxy_fix import ProxyFix

from search_api.auth import current_key, required_scope


def rate_key() -> str:
    """Who a request counts against: its key's name, or the client's address."""
    key = current_key()
    return f"key:{key.name}" if key else f"addr:{request.remote_addr}"


def limit_for_request() -> str:
    """The limit that applies: the per-key one, or the anonymous one."""
    cfg = current_app.config
    return cfg["RATE_LIMIT_KEY"] if current_key() else cfg["RATE_LIMIT_ANONYMOUS"]


def not_limited() -> bool:
    """Preflights, public endpoints (health checks must never be refused) and an empty limit: not counted."""
    if request.method == "OPTIONS" or not limit_for_request():
        return True
    return required_scope(current_app, request.endpoint, request.method) == "public"  # type: ignore[arg-type]


def init_app(app: APIFlask) -> None:
    """Limit requests per key (or client address); after `auth.init_app`, whose check names the key."""
    hops = int(app.config["PROXY_HOPS"])
    if hops:
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=hops)  # type: ignore[method-assign]
    limiter = Limiter(
        key_func=rate_key,
        app=app,
        default_limits=[limit_for_request],
        storage_uri=app.config["RATE_LIMIT_STORAGE"],
        headers_enabled=True,
        enabled=bool(app.config["RATE_LIMIT_ENABLED"]),
    )
    limiter.request_filter(not_limited)
    app.extensions["imgrec.limiter"] = limiter

    @app.errorhandler(RateLimitExceeded)
    def too_many(e: RateLimitExceeded):  # noqa: ANN202 - the app's JSON error; Retry-After added after
        key = current_key()
        who = f"the API key {key.name!r}" if key else f"requests without a key from {request.remote_addr}"
        return app.error_callback(
            HTTPError(429, f"rate limit of {e.description} reached for {who}; retry after Retry-After seconds")
        )
