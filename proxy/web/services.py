"""What the request handlers share, built once per application and reached through one AppKey."""

from __future__ import annotations

import asyncio
from collections import OrderedDict
from dataclasses import dataclass, field

from aiohttp import web

from builder.tags import Target
from proxy.builds.service import BuildService, Capabilities, NoBuilds, ProjectBuilds
from proxy.index.model import PageFormat, ProjectPage
from proxy.index.overlay import overlaid_page
from proxy.index.render import Rendered, render_project
from proxy.pages.cache import PageCache, PageResult
from proxy.pages.gcpause import BULK_FILES, collections_paused
from proxy.pages.rootlist import RootList
from proxy.settings import Settings
from proxy.storage.files import FileStore
from proxy.storage.scrub import Verifier
from proxy.web.metrics import Metrics

RENDER_IN_THREAD_FROM = 2000  # files; smaller pages render in well under a millisecond, inline


@dataclass(eq=False)
class RenderedPages:
    """Rendered bytes per (project, format, page version, targets, builds version, build state): a warm
    page is rendered once, and again when upstream's page or the project's builds change."""

    limit: int = 4096  # [cache] rendered_in_memory

    def __len__(self) -> int:
        return len(self._entries)

    _entries: OrderedDict[tuple[str, PageFormat, str, str, int, str], Rendered] = field(
        default_factory=OrderedDict
    )

    async def get(
        self,
        result: PageResult,
        fmt: PageFormat,
        targets: tuple[Target, ...],
        capabilities: Capabilities,
        builds: ProjectBuilds,
    ) -> Rendered:
        page = result.page
        state = capabilities.status.state.value if targets else ""
        key = (page.name, fmt, result.version, ",".join(t.id for t in targets), builds.version, state)
        rendered = self._entries.get(key)
        if rendered is None:
            if len(page.files) < RENDER_IN_THREAD_FROM:
                rendered = render_project(overlaid_page(page, targets, capabilities, builds), fmt)
            else:  # thousands of files: seconds of work that must not stall every other request
                rendered = await asyncio.to_thread(_render_bulk, page, fmt, targets, capabilities, builds)
            self._entries[key] = rendered
            if len(self._entries) > self.limit:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return rendered


def _render_bulk(
    page: ProjectPage,
    fmt: PageFormat,
    targets: tuple[Target, ...],
    capabilities: Capabilities,
    builds: ProjectBuilds,
) -> Rendered:
    with collections_paused(len(page.files) >= BULK_FILES):
        return render_project(overlaid_page(page, targets, capabilities, builds), fmt)


@dataclass(eq=False)
class Services:
    settings: Settings
    pages: PageCache
    root: RootList
    files: FileStore
    metrics: Metrics
    verifier: Verifier
    builds: BuildService = field(default_factory=NoBuilds)
    rendered: RenderedPages = field(default_factory=RenderedPages)


SERVICES = web.AppKey("services", Services)
CACHE_OUTCOME = web.RequestKey("cache_outcome", str)  # set by handlers, read by the access log
REQUEST_ID = web.RequestKey("request_id", str)
ROUTE = web.RequestKey("route", str)  # the matched route's pattern, set by the error middleware
# Why aiohttp's parser refused the request (no route, no handler ran), set by proxy.edge.
UNPARSED = web.RequestKey("unparsed", str)
