"""Prometheus metrics, one registry per app (so several apps in one process never collide)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter(
            "tokencredit_requests",
            "HTTP requests by route and status",
            ["route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "tokencredit_request_seconds",
            "HTTP request latency by route and status",
            ["route", "status"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tokens_scored = Counter(
            "tokencredit_tokens_scored", "Target tokens scored", registry=r
        )
        self.tokens_processed = Counter(
            "tokencredit_tokens_processed", "Context + target tokens sent to the engine", registry=r
        )
        self.queue_depth = Gauge(
            "tokencredit_queue_depth", "Requests waiting for the engine", registry=r
        )
        self.in_flight = Gauge("tokencredit_in_flight", "HTTP requests being handled", registry=r)
        self.requests_in_flight = 0  # the same number, for the batcher to read cheaply
        self.batch_size = Histogram(
            "tokencredit_batch_sequences",
            "Sequences per engine batch",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024),
            registry=r,
        )
        self.forward_seconds = Histogram(
            "tokencredit_engine_forward_seconds",
            "Engine scoring call time",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.weights_version = Gauge(
            "tokencredit_weights_version", "Loaded weights version", registry=r
        )
        self.engine_failures = Counter(
            "tokencredit_engine_failures",
            "Engine failures (deadline: a call hung; died: the engine broke)",
            ["kind"],
            registry=r,
        )
        self.engine_up = Gauge(
            "tokencredit_engine_up", "1 while the engine serves, 0 once it failed", registry=r
        )
        self.rejected = Counter(
            "tokencredit_rejected", "Requests rejected with 429 (queue full)", registry=r
        )
