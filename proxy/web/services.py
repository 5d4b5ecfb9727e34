"""What the request handlers share, built once per application and reached through one AppKey."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

from aiohttp import web
from packaging.utils import parse_wheel_filename
from packaging.version import Version

from builder.jobs import BuildKey, BuildState
from builder.pool import Builder
from builder.tags import Target
from proxy.index.model import DistFile, PageFormat, ProjectPage
from proxy.index.overlay import apply_overlay, built_alias, built_file, pending_file, pending_filename
from proxy.index.render import Rendered, render_project
from proxy.index.urls import proxied_page
from proxy.pages.cache import PageCache, PageResult
from proxy.pages.gcpause import BULK_FILES, collections_paused
from proxy.pages.rootlist import RootList
from proxy.settings import Settings
from proxy.storage.files import FileStore
from proxy.storage.scrub import Verifier
from proxy.web.metrics import Metrics

RENDER_IN_THREAD_FROM = 2000  # files; smaller pages render in well under a millisecond, inline


def overlaid_page(page: ProjectPage, targets: tuple[Target, ...], builder: Builder | None) -> ProjectPage:
    """The page a client sees: proxied URLs, plus built wheels and pending links for ``targets`` (its own;
    for a locking client, every target the farm serves on its platform)."""
    proxied = proxied_page(page)
    if not targets or builder is None:
        return proxied
    project = page.name

    def offer(version: Version, sdist: DistFile, target: Target) -> tuple[DistFile, ...]:
        assert sdist.sha256 is not None
        record = builder.record(BuildKey(sdist.sha256, target.id))
        if record is not None and record.state is BuildState.DONE:
            tags = frozenset(parse_wheel_filename(record.wheel_filename)[3])
            if not target.supports(tags):
                return ()
            pending = pending_filename(project, version, target)
            built = built_file(record, sdist)
            return (built,) if pending == built.filename else (built, built_alias(record, sdist, pending))
        if record is not None:
            return ()  # failed: remembered until a retry is asked for (or the builder changes)
        if builder.serves(target) and builder.allows(project):
            return (pending_file(project, version, sdist, target),)
        return ()

    return apply_overlay(proxied, targets, offer)


@dataclass(eq=False)
class RenderedPages:
    """Rendered bytes per (project, format, page version, target, builds): a warm page is rendered once."""

    limit: int = 4096  # [cache] rendered_in_memory

    def __len__(self) -> int:
        return len(self._entries)

    _entries: OrderedDict[tuple[str, PageFormat, str, str, int], Rendered] = field(
        default_factory=OrderedDict
    )

    async def get(
        self, result: PageResult, fmt: PageFormat, targets: tuple[Target, ...], builder: Builder | None
    ) -> Rendered:
        name = result.page.name
        builds = builder.generation.get(name, 0) if builder is not None and targets else 0
        key = (name, fmt, result.version, ",".join(t.id for t in targets), builds)
        rendered = self._entries.get(key)
        if rendered is None:
            page = result.page
            if len(page.files) < RENDER_IN_THREAD_FROM:
                rendered = render_project(overlaid_page(page, targets, builder), fmt)
            else:  # thousands of files: seconds of work that must not stall every other request
                rendered = await asyncio.to_thread(_render_bulk, page, fmt, targets, builder)
            self._entries[key] = rendered
            if len(self._entries) > self.limit:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return rendered


def _render_bulk(
    page: ProjectPage, fmt: PageFormat, targets: tuple[Target, ...], builder: Builder | None
) -> Rendered:
    with collections_paused(len(page.files) >= BULK_FILES):
        return render_project(overlaid_page(page, targets, builder), fmt)


def builder_status(builder: Builder | None) -> dict[str, str]:
    """Whether builds are offered, and if not why (for /healthz and the admin summary)."""
    if builder is None:
        return {"state": "off", "reason": "[builder] enabled = false"}
    status = builder.status()
    return {"state": status.state.value, **({"reason": status.reason} if status.reason else {})}


@dataclass(eq=False)
class Services:
    settings: Settings
    pages: PageCache
    root: RootList
    files: FileStore
    metrics: Metrics
    verifier: Verifier
    builder: Builder | None = None
    rendered: RenderedPages = field(default_factory=RenderedPages)


SERVICES = web.AppKey("services", Services)
CACHE_OUTCOME = web.RequestKey("cache_outcome", str)  # set by handlers, read by the access log
REQUEST_ID = web.RequestKey("request_id", str)
ROUTE = web.RequestKey("route", str)  # the matched route's pattern, set by the error middleware
# Why aiohttp's parser refused the request (no route, no handler ran), set by proxy.edge.
UNPARSED = web.RequestKey("unparsed", str)
