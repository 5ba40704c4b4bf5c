"""Prometheus metrics of one server (its own registry, so two apps in one process never mix counts)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

_SECONDS = (0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self, queue_depth: Callable[[], int], running: Callable[[], int]) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("hullft_requests", "HTTP requests answered", ["endpoint", "status"], registry=r)
        self.queue_depth = Gauge("hullft_queue_depth", "requests waiting for the model", registry=r)
        self.queue_depth.set_function(queue_depth)
        self.running = Gauge("hullft_running", "requests using the model", registry=r)
        self.running.set_function(running)
        self.queue_seconds = Histogram("hullft_queue_seconds", "seconds waited for the model", buckets=_SECONDS,
                                       registry=r)
        self.adapt_seconds = Histogram("hullft_adapt_seconds", "seconds of test-time adaptation per request",
                                       buckets=_SECONDS, registry=r)
        self.generate_seconds = Histogram("hullft_generate_seconds", "seconds of generation per request",
                                          buckets=_SECONDS, registry=r)
        self.tokens = Counter("hullft_tokens", "tokens processed", ["kind"], registry=r)
        self.adaptations = Counter("hullft_adaptations", "requests by adaptation outcome", ["outcome"], registry=r)

    def observe_call(self, queue: float, timings: dict[str, float], prompt_tokens: int, completion_tokens: int,
                     adapted: bool, skipped: bool) -> None:
        self.queue_seconds.observe(queue)
        self.adapt_seconds.observe(timings.get("adapt", 0.0))
        self.generate_seconds.observe(timings.get("generate", 0.0))
        self.tokens.labels("prompt").inc(prompt_tokens)
        self.tokens.labels("completion").inc(completion_tokens)
        self.adaptations.labels("skipped" if skipped else "adapted" if adapted else "unchanged").inc()

    def render(self) -> bytes:
        return generate_latest(self.registry)
