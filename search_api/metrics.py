"""Prometheus metrics: requests by endpoint and status, latency histograms, the index served.

Each app has its own registry. Under gunicorn with several workers, set
`PROMETHEUS_MULTIPROC_DIR` (see `gunicorn_conf.py`) so `/metrics` sums all workers.
"""

from __future__ import annotations

import os
import time

from flask import Flask, Response, g, request
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

from indexer import Snapshot
from indexer.damage import IndexDamageError


class Metrics:
    """The API's metrics, in their own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "imgrec_http_requests",
            "HTTP requests answered, by endpoint (URL rule), method and status.",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "imgrec_http_request_duration_seconds",
            "Time to answer an HTTP request, by endpoint and status.",
            ["endpoint", "status"],
            registry=self.registry,
        )
        self.items = Gauge(
            "imgrec_index_items",
            "Items in the index generation being served.",
            registry=self.registry,
            multiprocess_mode="livemax",
        )
        self.refused = Counter(
            "imgrec_index_generations_refused",
            "Published generations not served because a file of theirs is damaged, by kind of damage.",
            ["damage"],
            registry=self.registry,
        )
        self.generation = Gauge(
            "imgrec_index_generation",
            "Id of the index generation being served.",
            registry=self.registry,
            multiprocess_mode="livemax",
        )

    def generation_refused(self, damage: IndexDamageError) -> None:
        """Engine callback: a published generation was refused because a file of it is damaged."""
        self.refused.labels(type(damage).__name__).inc()

    def index_swapped(self, snap: Snapshot) -> None:
        """Engine callback: a new generation is being served."""
        self.items.set(snap.generation.item_count)
        self.generation.set(snap.generation.id)

    def observe(self, response: Response) -> Response:
        """after_request hook: count the request and its latency."""
        start = g.pop("imgrec_started", None)
        endpoint = request.url_rule.rule if request.url_rule is not None else "unmatched"
        status = str(response.status_code)
        self.requests.labels(endpoint, request.method, status).inc()
        if start is not None:
            self.latency.labels(endpoint, status).observe(time.perf_counter() - start)
        return response

    def exposition(self) -> tuple[bytes, str]:
        """The text format of every metric (all workers' when multiprocess mode is on)."""
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


def init_app(app: Flask) -> None:
    """Create the app's metrics and time every request."""
    metrics = Metrics()
    app.extensions["imgrec.metrics"] = metrics

    @app.before_request
    def start_timer() -> None:
        g.imgrec_started = time.perf_counter()

    app.after_request(metrics.observe)
