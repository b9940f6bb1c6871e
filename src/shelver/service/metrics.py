"""Prometheus metrics of one app: requests, latency, queries and their decisions, reloads.

Each app has its own registry (tests build many apps in one process). With several uvicorn
workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by ``shelver serve`` and ``/metrics`` sums them.
The abstention rate is ``shelver_decisions_total{decision="abstain"} / shelver_queries_total``, the
cache's hit rate ``shelver_cache_hits_total / shelver_queries_total``.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

disable_created_metrics()  # the *_created series double the output and no dashboard reads them

# the request path is about a millisecond: resolve well below it, and up to the timeouts
LATENCY_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.003,
    0.005,
    0.0075,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
ROUTES = ("/v1/classify", "/v1/model", "/healthz", "/readyz", "/metrics", "/admin/reload")


class ServiceMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "shelver_http_requests", "HTTP requests answered", ["route", "method", "status"], registry=r
        )
        self.latency = Histogram(
            "shelver_http_request_duration_seconds",
            "Time to answer",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.queries = Counter("shelver_queries", "Queries classified", registry=r)
        self.cache_hits = Counter("shelver_cache_hits", "Queries answered from the answer cache", registry=r)
        self.decisions = Counter(
            "shelver_decisions", "Queries by decision (abstain, ...)", ["decision"], registry=r
        )
        self.reloads = Counter("shelver_reloads", "Model reloads", ["result"], registry=r)
        self.model_calls = Histogram(
            "shelver_model_call_queries",
            "Distinct queries per model call (micro-batches of concurrent requests)",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.model = Gauge(
            "shelver_model_info",
            "The served model (value 1)",
            ["version"],
            registry=r,
            multiprocess_mode="liveall",
        )

    def observe_request(self, path: str, method: str, status: int, seconds: float) -> None:
        route = path if path in ROUTES else "other"  # unknown paths must not grow the label set
        self.requests.labels(route, method, str(status)).inc()
        self.latency.labels(route).observe(seconds)

    def observe_predictions(self, predictions: list[dict[str, Any]], cache_hits: int = 0) -> None:
        self.queries.inc(len(predictions))
        self.cache_hits.inc(cache_hits)
        counts: dict[str, int] = {}
        for p in predictions:
            decision = p.get("decision")
            key = decision[:32] if isinstance(decision, str) else "full"
            counts[key] = counts.get(key, 0) + 1
        for decision, n in counts.items():
            self.decisions.labels(decision).inc(n)

    def serving(self, version: str, previous: str | None = None) -> None:
        if previous is not None and previous != version:
            self.model.remove(previous)
        self.model.labels(version).set(1)

    def render(self) -> tuple[bytes, str]:
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST
