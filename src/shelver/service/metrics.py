"""Prometheus metrics of one app: requests, latency, queries and their decisions, reloads.

Each app has its own registry (tests build many apps in one process). With several uvicorn
workers, ``PROMETHEUS_MULTIPROC_DIR`` is set by ``shelver serve`` and ``/metrics`` sums them.
The abstention rate is ``shelver_decisions_total{decision="abstain"} / shelver_queries_total``, the
cache's hit rate ``shelver_cache_hits_total / shelver_queries_total``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)

from shelver import drift

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
LEVELS = ("level1", "level2")
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
        self.confidence = Histogram(
            "shelver_confidence",
            "Calibrated confidence of each query's best path, per level",
            ["level"],
            buckets=drift.EDGES,
            registry=r,
        )
        self.drift = DriftGauges(r, self.confidence, self.decisions)
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
        confidences = [p["confidence"] for p in predictions if len(p.get("confidence", ())) == 2]
        for level, values in zip(LEVELS, zip(*confidences, strict=True), strict=True):
            for value in values:
                self.confidence.labels(level).observe(value)

    def serving(
        self, version: str, previous: str | None = None, reference: dict[str, Any] | None = None
    ) -> None:
        """A model starts serving: its version, and the calibration sample live traffic is held to."""
        if previous is not None and previous != version:
            self.model.remove(previous)
        self.model.labels(version).set(1)
        self.drift.hold_to(reference)

    def render(self) -> tuple[bytes, str]:
        self.drift.update()
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            from prometheus_client import multiprocess

            registry = CollectorRegistry()
            multiprocess.MultiProcessCollector(registry)
            return generate_latest(registry), CONTENT_TYPE_LATEST
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class DriftGauges:
    """Live traffic against the calibration sample (``shelver.drift``), per level and worker:
    the population stability index of the confidences, and the answered share expected (from
    the sample) and seen. Read off ``shelver_confidence`` and ``shelver_decisions`` since the
    model started serving (their counts then are kept); no reference, no gauges."""

    def __init__(self, registry: CollectorRegistry, confidence: Histogram, decisions: Counter) -> None:
        mode = {"multiprocess_mode": "liveall"}
        self.psi = Gauge(
            "shelver_confidence_psi",
            "PSI of live vs calibration confidences",
            ["level"],
            registry=registry,
            **mode,
        )
        self.expected = Gauge(
            "shelver_answered_share_expected",
            "Share the calibration sample answered",
            ["level"],
            registry=registry,
            **mode,
        )
        self.live = Gauge(
            "shelver_answered_share_live",
            "Share of live queries answered",
            ["level"],
            registry=registry,
            **mode,
        )
        self.confidence, self.decisions = confidence, decisions
        self.hold_to(None)

    def hold_to(self, reference: dict[str, Any] | None) -> None:
        self.reference = reference if reference and reference.get("edges") == list(drift.EDGES) else None
        self.since = self._counts()

    def _counts(self) -> dict[str, np.ndarray]:
        """Per level the confidence bins, and the decisions, counted so far by the two metrics."""
        index = {float(edge): i for i, edge in enumerate(drift.EDGES)}
        cumulative = {level: np.zeros(len(drift.EDGES)) for level in LEVELS}
        for sample in self.confidence.collect()[0].samples:
            le = sample.labels.get("le", "+Inf")
            if sample.name.endswith("_bucket") and le != "+Inf":
                cumulative[sample.labels["level"]][index[float(le)]] = sample.value
        out = {level: np.diff(c, prepend=0.0) for level, c in cumulative.items()}
        decided = dict.fromkeys(drift.DECISION_NAMES, 0.0)
        for sample in self.decisions.collect()[0].samples:
            if sample.labels.get("decision") in decided:
                decided[sample.labels["decision"]] = sample.value
        out["decisions"] = np.array([decided[name] for name in drift.DECISION_NAMES])
        return out

    def update(self) -> None:
        if self.reference is None:
            return
        now = self._counts()
        live = {key: now[key] - self.since[key] for key in now}
        shares = _answered(self.reference["decisions"])
        total = live["decisions"].sum()
        seen = dict(zip(drift.DECISION_NAMES, live["decisions"] / total, strict=True)) if total else None
        for level in LEVELS:
            self.psi.labels(level).set(drift.psi(self.reference[level], live[level]))
            self.expected.labels(level).set(shares[level])
            if seen is not None:
                self.live.labels(level).set(_answered(seen)[level])


def _answered(shares: dict[str, float]) -> dict[str, float]:
    """Decision shares as the answered share per level (level 1: full paths and categories)."""
    return {"level1": shares["full"] + shares["category"], "level2": shares["full"]}
