"""The imgrec search API: query-by-image over HTTP, for programs (JSON) and people (a web page).

    app = create_app()          # config from IMGREC_* environment variables
    gunicorn -c python:search_api.gunicorn_conf 'search_api:create_app()'

Nothing heavy happens at import: FAISS and torch are loaded by `init_app`, inside `create_app`.
"""

from __future__ import annotations

import os
from typing import Any

from apiflask import APIFlask

DEFAULTS: dict[str, Any] = {
    "INDEX": None,  # index dir (IMGREC_INDEX); default: <instance folder>/index
    "MAX_CONTENT_LENGTH": 20 * 1024 * 1024,  # bytes per request body (chunked ones too); larger -> 413
    "MAX_URL_BYTES": 4096,  # request target (path and query); longer -> 414
    "MAX_HEADERS": 100,  # header fields per request; more -> 431
    "MAX_HEADER_BYTES": 4096,  # bytes per header field ("Name: value"); longer -> 431
    "MAX_PIXELS": 25_000_000,  # declared pixels per query image; larger -> 422
    "MAX_JPEG_SCANS": 100,  # scans per JPEG (each a pass over the image); more -> 422
    "DEFAULT_K": 10,
    "MAX_K": 100,  # k is 1..MAX_K
    "MAX_BATCH_IMAGES": 32,  # images per /v1/search/batch request
    "BATCH_WINDOW_MS": 2.0,  # micro-batching window; 0 turns batching off
    "MAX_BATCH": 32,  # images per encoder forward / FAISS call
    "RELOAD_INTERVAL": 0.5,  # seconds between checks for a newer generation; 0: never
    "MMAP": True,  # memory-map flat FAISS files (workers share one copy)
    "VERIFY": True,  # check FAISS against the catalog before serving a generation
    "THUMBNAIL_SIZE": 128,  # px, longest side
    "NOVELTY": True,  # report the query's novelty percentile when the model offers it
    "QUERY_EXPANSION": True,  # answer with the model's query expansion when it has one (docs/quality.md)
    "COMPUTE_THREADS": 1,  # torch/FAISS threads per process (0: library defaults); scale with workers
    # access control (docs/api.md, "Access control"): search_api.auth, ratelimit, cors
    "REQUIRE_READ_KEY": False,  # reads need a read (or write) key too; writes always need a write key
    "KEY_CACHE_SECONDS": 2.0,  # keys are re-read this often: a revoke takes effect within it
    "RATE_LIMIT_ENABLED": True,
    "RATE_LIMIT_KEY": "1200/minute",  # per API key (`limits` notation; "" for none)
    "RATE_LIMIT_ANONYMOUS": "300/minute",  # per client address, requests without a key
    "RATE_LIMIT_STORAGE": "memory://",  # per process; redis://... to count across gunicorn workers
    "PROXY_HOPS": 0,  # reverse proxies in front that set X-Forwarded-For (compose: 1)
    "CORS_ORIGINS": "",  # origins allowed to call the API from a browser (comma-separated); none by default
}


def create_app(test_config: dict[str, Any] | None = None) -> APIFlask:
    """Create and configure the search API app."""
    app = APIFlask(__name__, title="imgrec search API", version="1", instance_relative_config=True)
    app.config.from_mapping(DEFAULTS, INDEX=os.path.join(app.instance_path, "index"))
    app.config.from_mapping(OPENAPI_SETTINGS)
    app.config.from_prefixed_env("IMGREC")
    if test_config is not None:
        app.config.from_mapping(test_config)

    from search_api import apidocs, auth, cors, engine, errors, limits, metrics, ratelimit

    errors.init_app(app)
    limits.init_app(app)
    apidocs.init_app(app)
    metrics.init_app(app)
    auth.init_app(app)
    ratelimit.init_app(app)  # after auth: limits count per key
    cors.init_app(app)
    engine.init_app(app)

    from search_api import items, ops, pages, products, search, writes

    app.register_blueprint(search.bp)
    app.register_blueprint(items.bp)
    app.register_blueprint(products.bp)
    app.register_blueprint(ops.bp)
    app.register_blueprint(pages.bp)
    app.register_blueprint(writes.bp)
    keep_slashes(app)
    return app


def keep_slashes(app: APIFlask) -> None:
    """`//x` is not redirected to `/x`: a doubled slash is a bad URL here (404), never a new path."""
    app.url_map.merge_slashes = False
    for rule in app.url_map.iter_rules():
        rule.merge_slashes = False


OPENAPI_SETTINGS: dict[str, Any] = {
    "OPENAPI_VERSION": "3.0.3",  # the bundled Swagger UI (4.x) renders 3.0 documents
    "VALIDATION_ERROR_STATUS_CODE": 400,
    "DESCRIPTION": (
        "Find the inventory items that look most like a photo. Every answer names the index generation "
        "that produced it; every error is `{error, message}` JSON."
    ),
}
