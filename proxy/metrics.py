"""Prometheus metrics (prometheus-client), one registry per application so tests do not share counters.

The admin summary reads its hit/miss/stale counts from the same counters, so the two always agree.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from builder.artifacts import BuildRecord
from proxy.names import NormalizedName
from proxy.upstream import Upstream, UpstreamFile, UpstreamPage

CONTENT_TYPE = CONTENT_TYPE_LATEST
_BUILD_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "wheelfarm_requests", "HTTP requests answered", ["route", "status"], registry=self.registry
        )
        self.cache = Counter(
            "wheelfarm_cache_outcomes",
            "Cache outcomes of answered requests",
            ["outcome"],
            registry=self.registry,
        )
        self.bytes_served = Counter("wheelfarm_bytes_served", "Bytes sent to clients", registry=self.registry)
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
        self._request_children: dict[tuple[str, int], Any] = {}
        self._cache_children: dict[str, Any] = {}

    def count_request(self, route: str, status: int, sent: int, outcome: str | None) -> None:
        # labels() looks the child up under a lock each time; keep the children we have seen.
        key = (route, status)
        child = self._request_children.get(key)
        if child is None:
            child = self._request_children[key] = self.requests.labels(route, str(status))
        child.inc()
        self.bytes_served.inc(sent)
        if outcome:
            cache_child = self._cache_children.get(outcome)
            if cache_child is None:
                cache_child = self._cache_children[outcome] = self.cache.labels(outcome)
            cache_child.inc()

    def watch_builds(self, queued: Callable[[], int], running: Callable[[], int]) -> None:
        self.queue_depth.set_function(queued)
        self.running.set_function(running)

    def build_finished(self, record: BuildRecord) -> None:
        self.builds.labels(record.state.value).inc()
        self.build_seconds.observe(record.duration)

    def cache_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for metric in self.cache.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    counts[sample.labels["outcome"]] = int(sample.value)
        return dict(sorted(counts.items()))

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
