"""The top page layer: a project page as one client sees it, rendered.

For the client's target (none on /plain/), the page gets proxied URLs and, from the build service, built
wheels and build-pending links (proxy/index/overlay.py, pure); a locking client (``uv lock``) gets every
target the farm serves on its platform, and the newest release is built for them first
(proxy/builds/locking.py). Rendered bytes are kept per (project, format, page version, targets, builds
version, build state): a warm page is rendered once, and again when upstream's page or the project's builds
change.
"""

from __future__ import annotations

import asyncio
from collections import OrderedDict

from builder.tags import Target
from proxy.builds.locking import lock_view
from proxy.builds.service import BuildService, Capabilities, ProjectBuilds
from proxy.index.model import PageFormat, ProjectPage
from proxy.index.names import NormalizedName
from proxy.index.overlay import overlaid_page
from proxy.index.render import Rendered, render_project
from proxy.pages.cache import PageResult
from proxy.pages.gcpause import BULK_FILES, collections_paused
from proxy.pages.source import PageSource

RENDER_IN_THREAD_FROM = 1000  # files; about 30 µs each, so a smaller page holds the loop for under 0.03 s

_RenderKey = tuple[str, PageFormat, str, str, int, str]


class OverlayPages:
    def __init__(
        self, source: PageSource, builds: BuildService, *, rendered_limit: int, lock_hold_seconds: float
    ) -> None:
        self._source = source
        self._builds = builds
        self._limit = rendered_limit  # [cache] rendered_in_memory
        self._lock_hold_seconds = lock_hold_seconds  # [builder] uv_hold_seconds
        self._rendered: OrderedDict[_RenderKey, Rendered] = OrderedDict()

    def __len__(self) -> int:
        """Rendered pages kept in memory (the admin summary shows it)."""
        return len(self._rendered)

    async def page(
        self, name: NormalizedName, fmt: PageFormat, target: Target | None, *, locking: bool = False
    ) -> tuple[PageResult, Rendered]:
        """The page of ``name`` as a client of ``target`` sees it, in ``fmt``; ``locking``: the client
        writes a lock file for every Python (proxy/builds/locking.py)."""
        result = await self._source.project(name)
        targets: tuple[Target, ...] = (target,) if target is not None else ()
        capabilities = await self._builds.capabilities()
        builds = await self._builds.project(name)
        if target is not None and locking:
            hold = self._lock_hold_seconds
            targets = await lock_view(self._builds, result.page, target, capabilities, builds, hold)
            builds = await self._builds.project(name)  # what the lock view's builds finished meanwhile
        return result, await self._render(result, fmt, targets, capabilities, builds)

    async def _render(
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
        rendered = self._rendered.get(key)
        if rendered is not None:
            self._rendered.move_to_end(key)
            return rendered
        if len(page.files) < RENDER_IN_THREAD_FROM:
            rendered = render_project(overlaid_page(page, targets, capabilities, builds), fmt)
        else:  # thousands of files: seconds of work that must not stall every other request
            rendered = await asyncio.to_thread(_render_bulk, page, fmt, targets, capabilities, builds)
        self._rendered[key] = rendered
        if len(self._rendered) > self._limit:
            self._rendered.popitem(last=False)
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
