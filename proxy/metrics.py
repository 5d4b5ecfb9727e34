"""Prometheus metrics (prometheus-client), one registry per application so tests do not share counters.

The admin summary reads its hit/miss/stale counts from the same counters, so the two always agree.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from builder.artifacts import BuildRecord
from proxy.names import NormalizedName
from proxy.upstream import Upstream, UpstreamFile, UpstreamPage

CONTENT_TYPE = CONTENT_TYPE_LATEST
_BUILD_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)


class RequestCounts:
    """Per-request counters as plain integers, turned into Prometheus counters only when scraped.

    prometheus-client's Counter takes a lock on every increment; at several thousand warm pages a second,
    three increments per request were a few percent of the proxy's CPU. The event loop is the only writer.
    """

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.outcomes: defaultdict[str, int] = defaultdict(int)
        self.bytes_served = 0

    def collect(self) -> Iterator[Metric]:
        requests = CounterMetricFamily(
            "wheelfarm_requests", "HTTP requests answered", labels=["route", "status"]
        )
        for (route, status), count in sorted(self.requests.items()):
            requests.add_metric([route, str(status)], count)
        outcomes = CounterMetricFamily(
            "wheelfarm_cache_outcomes", "Cache outcomes of answered requests", labels=["outcome"]
        )
        for outcome, count in sorted(self.outcomes.items()):
            outcomes.add_metric([outcome], count)
        yield requests
        yield outcomes
        yield CounterMetricFamily("wheelfarm_bytes_served", "Bytes sent to clients", value=self.bytes_served)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.counts = RequestCounts()
        self.registry.register(self.counts)
        self.upstream_seconds = Histogram(
            "wheelfarm_upstream_request_seconds",
            "Upstream page fetches, by outcome",
            ["outcome"],
            registry=self.registry,
        )
        self.builds = Counter("wheelfarm_builds", "Finished builds", ["state"], registry=self.registry)
        self.build_seconds = Histogram(
            "wheelfarm_build_duration_seconds", "Build durations (queue included)", buckets=_BUILD_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "wheelfarm_build_queue_depth", "Builds waiting for a worker", registry=self.registry
        )
        self.running = Gauge("wheelfarm_builds_running", "Builds in a worker now", registry=self.registry)

    def count_request(self, route: str, status: int, sent: int, outcome: str | None) -> None:
        counts = self.counts
        counts.requests[route, status] += 1
        counts.bytes_served += sent
        if outcome:
            counts.outcomes[outcome] += 1

    def watch_builds(self, queued: Callable[[], int], running: Callable[[], int]) -> None:
        self.queue_depth.set_function(queued)
        self.running.set_function(running)

    def build_finished(self, record: BuildRecord) -> None:
        self.builds.labels(record.state.value).inc()
        self.build_seconds.observe(record.duration)

    def cache_counts(self) -> dict[str, int]:
        return dict(sorted(self.counts.outcomes.items()))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class TimedUpstream:
    """A layer over an Upstream that times page fetches into the metrics (outcome: status or error)."""

    def __init__(self, upstream: Upstream, metrics: Metrics) -> None:
        self._upstream = upstream
        self._metrics = metrics

    async def fetch_project(self, name: NormalizedName, etag: str | None) -> UpstreamPage:
        started = time.perf_counter()
        outcome = "error"
        try:
            page = await self._upstream.fetch_project(name, etag)
            outcome = page.status.value
            return page
        finally:
            self._metrics.upstream_seconds.labels(outcome).observe(time.perf_counter() - started)

    async def fetch_root(self, destination: Path, etag: str | None) -> UpstreamPage:
        return await self._upstream.fetch_root(destination, etag)

    def open_file(self, url: str) -> contextlib.AbstractAsyncContextManager[UpstreamFile]:
        return self._upstream.open_file(url)
