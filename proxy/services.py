"""What the request handlers share, built once per application and reached through one AppKey."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from aiohttp import web

from proxy.files import FileStore
from proxy.model import PageFormat
from proxy.pages import PageCache, PageResult
from proxy.render import Rendered, render_project
from proxy.rootlist import RootList
from proxy.settings import Settings
from proxy.urls import proxied_page

RENDERED_PAGES_IN_MEMORY = 4096


@dataclass(eq=False)
class RenderedPages:
    """Rendered bytes per (project, format, page version): a warm page is never rendered twice."""

    limit: int = RENDERED_PAGES_IN_MEMORY
    _entries: OrderedDict[tuple[str, PageFormat, str], Rendered] = field(default_factory=OrderedDict)

    def get(self, result: PageResult, fmt: PageFormat) -> Rendered:
        key = (result.page.name, fmt, result.version)
        rendered = self._entries.get(key)
        if rendered is None:
            rendered = render_project(proxied_page(result.page), fmt)
            self._entries[key] = rendered
            if len(self._entries) > self.limit:
                self._entries.popitem(last=False)
        else:
            self._entries.move_to_end(key)
        return rendered


@dataclass(eq=False)
class Services:
    settings: Settings
    pages: PageCache
    root: RootList
    files: FileStore
    rendered: RenderedPages = field(default_factory=RenderedPages)


SERVICES = web.AppKey("services", Services)
CACHE_OUTCOME = web.RequestKey("cache_outcome", str)  # set by handlers, read by the access log
REQUEST_ID = web.RequestKey("request_id", str)
