"""Prometheus metrics (prometheus-client), one registry per application so tests do not share counters.

The admin summary reads its hit/miss/stale counts from the same counters, so the two always agree.
"""

from __future__ import annotations

import bisect
import contextlib
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from builder.jobs import BuildRecord
from proxy.builds.service import BuildCounts
from proxy.index.names import NormalizedName
from proxy.pages.upstream import Upstream, UpstreamFile, UpstreamPage
from proxy.storage.diskspace import DiskFullReport
from proxy.storage.integrity import IntegrityCounts

CONTENT_TYPE = CONTENT_TYPE_LATEST
_BUILD_BUCKETS = (1, 2, 5, 10, 20, 30, 60, 120, 300, 600, 1200, 3600)
# Request durations: warm pages take well under a millisecond of our time, a held build-pending link up to
# the client's read timeout, a big download minutes.
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0, 30.0, 60.0)


class RequestCounts:
    """Per-request counters as plain integers, turned into Prometheus counters only when scraped.

    prometheus-client's Counter takes a lock on every increment; at several thousand warm pages a second,
    three increments per request were a few percent of the proxy's CPU. The event loop is the only writer.
    """

    def __init__(self) -> None:
        self.requests: defaultdict[tuple[str, int], int] = defaultdict(int)
        self.outcomes: defaultdict[str, int] = defaultdict(int)
        self.bytes_served = 0
        # Per route: a count per bucket of REQUEST_BUCKETS (the last one: slower than all), and the sum.
        self.durations: dict[str, list[int]] = {}
        self.duration_sums: defaultdict[str, float] = defaultdict(float)

    def observe(self, route: str, seconds: float) -> None:
        buckets = self.durations.get(route)
        if buckets is None:
            buckets = self.durations[route] = [0] * (len(REQUEST_BUCKETS) + 1)
        buckets[bisect.bisect_left(REQUEST_BUCKETS, seconds)] += 1
        self.duration_sums[route] += seconds

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
        durations = HistogramMetricFamily(
            "wheelfarm_request_duration_seconds", "Time to answer a request, by route", labels=["route"]
        )
        for route, buckets in sorted(self.durations.items()):
            cumulative, total = [], 0
            for bound, count in zip([*map(str, REQUEST_BUCKETS), "+Inf"], buckets, strict=True):
                total += count
                cumulative.append((bound, total))
            durations.add_metric([route], cumulative, sum_value=self.duration_sums[route])
        yield durations


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
            "wheelfarm_build_duration_seconds", "How long builds ran (waiting in the queue excluded)",
            buckets=_BUILD_BUCKETS, registry=self.registry,
        )  # fmt: skip
        self.queue_seconds = Histogram(
            "wheelfarm_build_queue_seconds", "How long builds waited for a worker", buckets=_BUILD_BUCKETS,
            registry=self.registry,
        )  # fmt: skip
        self.queue_depth = Gauge(
            "wheelfarm_build_queue_depth", "Builds waiting for a worker", registry=self.registry
        )
        self.running = Gauge("wheelfarm_builds_running", "Builds in a worker now", registry=self.registry)
        self.reproducibility = Gauge(
            "wheelfarm_built_wheels_reproducibility",
            "Built wheels by the verdict of their second build: reproduced, not_reproduced, unchecked",
            ["verdict"], registry=self.registry,
        )  # fmt: skip
        self.built_sizes: dict[str, float] = {"built.bytes": 0, "built.entries": 0}
        # process_open_fds, process_max_fds, process_resident_memory_bytes: read from /proc when scraped.
        ProcessCollector(registry=self.registry)

    def count_request(self, route: str, status: int, sent: int, outcome: str | None, seconds: float) -> None:
        counts = self.counts
        counts.requests[route, status] += 1
        counts.bytes_served += sent
        counts.observe(route, seconds)
        if outcome:
            counts.outcomes[outcome] += 1

    def watch_cache(self, values: Callable[[], dict[str, float]]) -> None:
        """Cache sizes and evictions, read when scraped (``values`` is cheap: in-memory indexes)."""
        self.registry.register(_CacheSizes(values))

    def watch_integrity(self, counts: IntegrityCounts) -> None:
        """Rehashes and quarantines of cached files, read when scraped."""
        self.registry.register(_Integrity(counts))

    def watch_disk(self, disk: DiskFullReport) -> None:
        """Writes the cache disk had no room for, read when scraped."""
        self.registry.register(_DiskFull(disk))

    def watch_connections(self, open_now: Callable[[], int], closed: Callable[[], dict[str, int]]) -> None:
        """Client connections open now, and those the proxy closed or refused, by reason (proxy.web.edge)."""
        self.registry.register(_Connections(open_now, closed))

    def update_builds(self, counts: BuildCounts) -> None:
        """What the build service counts now, set just before a scrape (asking it is async)."""
        self.queue_depth.set(counts.queued)
        self.running.set(counts.running)
        self.built_sizes = {"built.bytes": counts.built_bytes, "built.entries": counts.done}
        self.reproducibility.labels("reproduced").set(counts.reproduced)
        self.reproducibility.labels("not_reproduced").set(counts.not_reproduced)
        self.reproducibility.labels("unchecked").set(counts.done - counts.reproduced - counts.not_reproduced)

    def build_finished(self, record: BuildRecord) -> None:
        self.builds.labels(record.state.value).inc()
        self.build_seconds.observe(record.duration)
        self.queue_seconds.observe(record.queued_seconds)

    def cache_counts(self) -> dict[str, int]:
        return dict(sorted(self.counts.outcomes.items()))

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _CacheSizes:
    """wheelfarm_cache_bytes{store}, wheelfarm_cache_entries{store}, wheelfarm_cache_evictions{store}."""

    def __init__(self, values: Callable[[], dict[str, float]]) -> None:
        self._values = values

    def collect(self) -> Iterator[Metric]:
        values = self._values()
        sizes = GaugeMetricFamily("wheelfarm_cache_bytes", "Bytes kept, by store", labels=["store"])
        entries = GaugeMetricFamily("wheelfarm_cache_entries", "Entries kept, by store", labels=["store"])
        evictions = CounterMetricFamily(
            "wheelfarm_cache_evictions", "Entries evicted to stay under the size limit", labels=["store"]
        )
        for key, value in sorted(values.items()):
            store, _, kind = key.partition(".")
            if kind == "bytes":
                sizes.add_metric([store], value)
            elif kind == "entries":
                entries.add_metric([store], value)
            else:
                evictions.add_metric([store], value)
        yield sizes
        yield entries
        yield evictions


class _Integrity:
    """wheelfarm_files_checked, _checked_bytes, _quarantined and wheelfarm_scrub_bytes (since the start)."""

    def __init__(self, counts: IntegrityCounts) -> None:
        self._counts = counts

    def collect(self) -> Iterator[Metric]:
        counts = self._counts
        yield CounterMetricFamily(
            "wheelfarm_files_checked",
            "Cached files rehashed (first hit after a start, scrub, verify)",
            value=counts.checked,
        )
        yield CounterMetricFamily(
            "wheelfarm_files_checked_bytes", "Bytes of cached files rehashed", value=counts.checked_bytes
        )
        yield CounterMetricFamily(
            "wheelfarm_files_quarantined",
            "Cached files whose bytes no longer matched their hash, moved aside and fetched again",
            value=counts.quarantined,
        )
        yield CounterMetricFamily(
            "wheelfarm_scrub_bytes", "Bytes the background scrub rehashed", value=counts.scrub_bytes
        )


class _DiskFull:
    """wheelfarm_disk_full{store, stage} (since the start)."""

    def __init__(self, disk: DiskFullReport) -> None:
        self._disk = disk

    def collect(self) -> Iterator[Metric]:
        full = CounterMetricFamily(
            "wheelfarm_disk_full",
            "Writes the cache disk had no room for, by store and stage (before_download: refused with a 507; "
            "during_download: cut; write: a page kept in memory only)",
            labels=["store", "stage"],
        )
        for store, stage in sorted(self._disk.counts, key=lambda pair: (pair[0], pair[1].value)):
            full.add_metric([store, stage.value], self._disk.counts[store, stage])
        yield full


class _Connections:
    """wheelfarm_connections_open, wheelfarm_connections_closed{reason}."""

    def __init__(self, open_now: Callable[[], int], closed: Callable[[], dict[str, int]]) -> None:
        self._open = open_now
        self._closed = closed

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily("wheelfarm_connections_open", "Client connections open", value=self._open())
        closed = CounterMetricFamily(
            "wheelfarm_connections_closed",
            "Client connections the proxy closed or refused: header_timeout (408), evicted (idle, to make "
            "room at [server] max_connections), refused (503: every connection busy)",
            labels=["reason"],
        )
        for reason, count in sorted(self._closed().items()):
            closed.add_metric([reason], count)
        yield closed


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
