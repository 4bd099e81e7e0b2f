"""Prometheus metrics, in a registry of the app's own (never the process-global one).

- mt_http_requests_total{method, route, status}: counter; `route` is the route template
  ("/slots/{i}"), never the raw path, so label sets stay few.
- mt_http_request_duration_seconds{method, route}: histogram.
- mt_bank_*: the bank at scrape time (used, capacity gauges; reads, hits, misses, writes,
  evictions counters; cache bytes), mt_read_batches_total / mt_read_batch_queries_total,
  mt_write_groups_total, mt_ready.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _BankCollector(Collector):
    """Reports the engine stats last handed to `update` (refreshed on every scrape)."""

    def __init__(self) -> None:
        self.stats: dict[str, Any] | None = None
        self.ready = False

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("mt_ready", "1 when the engine serves requests", value=self.ready)
        s = self.stats
        if s is None:
            return
        yield GaugeMetricFamily("mt_bank_used", "Occupied slots", value=s["used"])
        yield GaugeMetricFamily("mt_bank_capacity", "Slots in the bank", value=s["capacity"])
        yield GaugeMetricFamily("mt_bank_bytes", "Bytes of bank state", value=s["bank_bytes"])
        yield GaugeMetricFamily(
            "mt_bank_cache_bytes", "Bytes of the bank's read cache", value=s["cache_bytes"]
        )
        yield GaugeMetricFamily(
            "mt_bank_count_mean", "Mean access count of occupied slots", value=s["counts"]["mean"]
        )
        for name in ("reads", "hits", "misses", "writes", "evictions"):
            yield CounterMetricFamily(
                f"mt_bank_{name}", f"Bank {name} since it was created", value=s[name]
            )
        batching = s["batching"]
        yield CounterMetricFamily("mt_read_batches", "Read batches run", value=batching["batches"])
        yield CounterMetricFamily(
            "mt_read_batch_queries", "Queries answered in read batches", value=batching["queries"]
        )
        yield CounterMetricFamily(
            "mt_write_groups",
            "Write groups run (one WAL append each)",
            value=batching["write_groups"],
        )
        last = s.get("last_snapshot")
        if last is not None:
            yield GaugeMetricFamily(
                "mt_last_snapshot_bytes", "Size of the last snapshot", value=last["bytes"]
            )


class Metrics:
    """One app's metrics: the ASGI middleware records requests, `render` makes the text."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.requests = Counter(
            "mt_http_requests",
            "HTTP requests by route and status",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "mt_http_request_duration_seconds",
            "HTTP request latency by route",
            ["method", "route"],
            buckets=_BUCKETS,
            registry=self.registry,
        )
        self.bank = _BankCollector()
        self.registry.register(self.bank)
        # the labelled children, found once per (method, route, status): labels() takes a
        # lock and builds its key on every call, on every request
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    def observe(self, method: str, route: str, status: int, seconds: float) -> None:
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
        children[0].inc()
        children[1].observe(seconds)

    def render(self, stats: dict[str, Any] | None, ready: bool) -> bytes:
        self.bank.stats, self.bank.ready = stats, ready
        return generate_latest(self.registry)


class MetricsMiddleware:
    """Pure ASGI middleware (no response buffering): counts and times every HTTP request."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # what the client gets if the app raises before answering

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = getattr(scope.get("route"), "path", None) or "unmatched"
            self.metrics.observe(scope["method"], route, status, time.perf_counter() - start)
