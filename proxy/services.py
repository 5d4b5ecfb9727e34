"""What the request handlers share, built once per application and reached through one AppKey."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from aiohttp import web
from packaging.utils import parse_wheel_filename
from packaging.version import Version

from builder.jobs import BuildKey, BuildState
from builder.pool import Builder
from builder.tags import Target
from proxy.files import FileStore
from proxy.metrics import Metrics
from proxy.model import DistFile, PageFormat, ProjectPage
from proxy.overlay import apply_overlay, built_file, pending_file
from proxy.pages import PageCache, PageResult
from proxy.render import Rendered, render_project
from proxy.rootlist import RootList
from proxy.settings import Settings
from proxy.urls import proxied_page

RENDERED_PAGES_IN_MEMORY = 4096


def overlaid_page(page: ProjectPage, target: Target | None, builder: Builder | None) -> ProjectPage:
    """The page a client of ``target`` sees: proxied URLs, plus built wheels and pending links."""
    proxied = proxied_page(page)
    if target is None or builder is None:
        return proxied
    project = page.name

    def offer(version: Version, sdist: DistFile) -> DistFile | None:
        assert sdist.sha256 is not None
        record = builder.record(BuildKey(sdist.sha256, target.id))
        if record is not None and record.state is BuildState.DONE:
            tags = frozenset(parse_wheel_filename(record.wheel_filename)[3])
            return built_file(record, sdist) if target.supports(tags) else None
        if record is not None:
            return None  # failed: remembered until a retry is asked for (or the builder changes)
        if builder.serves(target) and builder.allows(project):
            return pending_file(project, version, sdist, target)
        return None

    return apply_overlay(proxied, target, offer)


@dataclass(eq=False)
class RenderedPages:
    """Rendered bytes per (project, format, page version, target, builds): a warm page is rendered once."""

    limit: int = RENDERED_PAGES_IN_MEMORY
    _entries: OrderedDict[tuple[str, PageFormat, str, str, int], Rendered] = field(
        default_factory=OrderedDict
    )

    def get(
        self, result: PageResult, fmt: PageFormat, target: Target | None, builder: Builder | None
    ) -> Rendered:
        name = result.page.name
        builds = builder.generation.get(name, 0) if builder is not None and target is not None else 0
        key = (name, fmt, result.version, target.id if target else "", builds)
        rendered = self._entries.get(key)
        if rendered is None:
            rendered = render_project(overlaid_page(result.page, target, builder), fmt)
            self._entries[key] = rendered
            if len(self._entries) > self.limit:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return rendered


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
    builder: Builder | None = None
    rendered: RenderedPages = field(default_factory=RenderedPages)


SERVICES = web.AppKey("services", Services)
CACHE_OUTCOME = web.RequestKey("cache_outcome", str)  # set by handlers, read by the access log
REQUEST_ID = web.RequestKey("request_id", str)
