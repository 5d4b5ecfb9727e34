"""Project pages with freshness: TTL, ETag revalidation, stale-if-error, serials that never go backwards.

Recently used pages stay parsed in memory, so a warm hit touches neither the disk nor a parser. One upstream
request per project at a time, however many clients ask (single flight); the refresh runs as its own task so
a client that hangs up does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import structlog

from proxy.clock import Clock
from proxy.errors import NotFound, UpstreamError
from proxy.index.model import ProjectPage
from proxy.index.names import NormalizedName
from proxy.index.parse import UpstreamPageError, parse_project_html, parse_project_json
from proxy.pages.gcpause import BULK_BYTES, collections_paused
from proxy.pages.store import PageMeta, PageStore
from proxy.pages.upstream import FetchStatus, Upstream, UpstreamPage
from proxy.settings import Settings

log = structlog.get_logger(__name__)

# After upstream failed for a project, serve the stale page without asking again for this long, so a dead
# upstream costs one timeout per project per interval rather than one per request.
FAILURE_BACKOFF_SECONDS = 15.0


class CacheOutcome(enum.Enum):
    HIT = "hit"
    MISS = "miss"
    REVALIDATED = "revalidated"
    STALE = "stale"


@dataclass(frozen=True, slots=True)
class PageResult:
    page: ProjectPage
    outcome: CacheOutcome
    fetched_at: float
    version: str  # changes whenever the content does: part of rendered-bytes cache keys
    stale_reason: str | None = None


class ProjectNotFound(NotFound):
    def __init__(self, name: str, outcome: CacheOutcome) -> None:
        super().__init__(f"project {name!r} does not exist upstream")
        self.outcome = outcome


@dataclass(frozen=True, slots=True)
class _Known:
    meta: PageMeta
    page: ProjectPage | None  # None: upstream said 404


class PageCache:
    def __init__(
        self,
        upstream: Upstream,
        store: PageStore,
        clock: Clock,
        settings: Settings,
    ) -> None:
        self._upstream = upstream
        self._store = store
        self._clock = clock
        self._settings = settings
        self._inflight: dict[NormalizedName, asyncio.Task[PageResult]] = {}
        self._known: OrderedDict[NormalizedName, _Known] = OrderedDict()
        self._failures: OrderedDict[NormalizedName, tuple[float, str]] = OrderedDict()

    def sizes(self) -> dict[str, int]:
        """How much this cache holds in memory (the admin summary shows it; each is bounded)."""
        return {"pages": len(self._known), "failures": len(self._failures)}

    async def project(self, name: NormalizedName, *, max_age: float | None = None) -> PageResult:
        """The page for ``name``; ``max_age`` overrides the TTL (0 forces a revalidation)."""
        known = await self._lookup(name)
        now = self._clock.now()
        if known is not None:
            ttl = self._ttl(known) if max_age is None else max_age
            if now - known.meta["fetched_at"] < ttl:
                return _result(name, known, CacheOutcome.HIT)
            failure = self._failures.get(name)
            if (
                failure is not None
                and now - failure[0] < FAILURE_BACKOFF_SECONDS
                and self._may_serve_stale(known)
            ):
                return _result(name, known, CacheOutcome.STALE, failure[1])
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.create_task(self._refresh(name, known))
            self._inflight[name] = task
            task.add_done_callback(lambda _: self._inflight.pop(name, None))
        if known is None or not self._may_serve_stale(known) or max_age == 0:
            return await asyncio.shield(task)
        # A page past its TTL: a slow upstream must not outlast the client's patience (pip's read timeout
        # is 15 s). Past revalidate_wait the cached page is served at once; the refresh goes on.
        done, _ = await asyncio.wait({task}, timeout=self._settings.cache_revalidate_wait)
        if done:
            return task.result()
        return _result(name, known, CacheOutcome.STALE, "upstream is slow; the page is being revalidated")

    async def store_stats(self) -> tuple[int, int]:
        """(pages cached, bytes on disk)."""
        return await self._store.stats()

    async def forget(self, name: NormalizedName) -> bool:
        self._known.pop(name, None)
        return await self._store.delete(_key(name))

    def _ttl(self, known: _Known) -> float:
        return self._settings.cache_page_ttl if known.meta["found"] else self._settings.cache_not_found_ttl

    def _may_serve_stale(self, known: _Known) -> bool:
        return self._clock.now() - known.meta["fetched_at"] < self._settings.cache_stale_if_error

    async def _lookup(self, name: NormalizedName) -> _Known | None:
        known = self._known.get(name)
        if known is not None:
            self._known.move_to_end(name)
            return known
        meta = await self._store.get_meta(_key(name))
        if meta is None:
            return None
        page = None
        if meta["found"]:
            body = await self._store.get_body(_key(name))
            if body is None:
                return None
            try:
                page = await asyncio.to_thread(
                    _parse, name, body, meta["url"], meta["content_type"], meta["serial"]
                )
            except UpstreamPageError:
                return None  # written by an older version that read it differently: fetch again
        return self._remember(name, _Known(meta, page))

    def _remember(self, name: NormalizedName, known: _Known) -> _Known:
        self._known[name] = known
        self._known.move_to_end(name)
        if len(self._known) > self._settings.cache_pages_in_memory:
            self._known.popitem(last=False)
        return known

    async def _refresh(self, name: NormalizedName, cached: _Known | None) -> PageResult:
        etag = cached.meta["etag"] if cached is not None and cached.meta["found"] else None
        try:
            answer = await self._upstream.fetch_project(name, etag)
            # Parse before storing: a page we cannot read must not replace one we can. In a thread: a page of
            # thousands of files takes long enough to stall every other request.
            page = (
                await asyncio.to_thread(_parse_answer, name, answer)
                if answer.status is FetchStatus.FOUND
                else None
            )
        except (UpstreamError, UpstreamPageError) as exc:
            self._failures[name] = (self._clock.now(), str(exc))
            self._failures.move_to_end(name)
            while len(self._failures) > self._settings.cache_failures_in_memory:
                self._failures.popitem(last=False)
            if cached is not None and self._may_serve_stale(cached):
                log.warning("upstream_failed_serving_stale", project=name, error=str(exc))
                return _result(name, cached, CacheOutcome.STALE, str(exc))
            if isinstance(exc, UpstreamPageError):
                raise UpstreamError(str(exc)) from None
            raise
        self._failures.pop(name, None)
        now = self._clock.now()
        if cached is not None and (answer.status is FetchStatus.NOT_MODIFIED or _older(answer, cached.meta)):
            if answer.status is FetchStatus.FOUND:
                # A lagging mirror or CDN node: keep the newer page (X-PyPI-Last-Serial never goes back).
                log.warning(
                    "upstream_serial_older",
                    project=name,
                    cached=cached.meta["serial"],
                    upstream=answer.serial,
                )
            known = _Known(PageMeta(**{**cached.meta, "fetched_at": now}), cached.page)
            await self._store.put(_key(name), known.meta)
            return _result(name, self._remember(name, known), CacheOutcome.REVALIDATED)
        meta = PageMeta(
            found=page is not None,
            url=answer.url,
            content_type=answer.content_type,
            etag=answer.etag,
            serial=answer.serial,
            fetched_at=now,
            version=hashlib.sha256(answer.body).hexdigest()[:24],
        )
        await self._store.put(_key(name), meta, answer.body if page is not None else None)
        known = self._remember(name, _Known(meta, page))
        return _result(name, known, CacheOutcome.MISS)


def _result(name: str, known: _Known, outcome: CacheOutcome, stale_reason: str | None = None) -> PageResult:
    if known.page is None:
        raise ProjectNotFound(name, outcome)
    return PageResult(known.page, outcome, known.meta["fetched_at"], known.meta["version"], stale_reason)


def _parse_answer(name: NormalizedName, answer: UpstreamPage) -> ProjectPage:
    return _parse(name, answer.body, answer.url, answer.content_type, answer.serial)


def _parse(name: NormalizedName, body: bytes, url: str, content_type: str, serial: int | None) -> ProjectPage:
    with collections_paused(len(body) >= BULK_BYTES):
        if "json" in content_type:
            page = parse_project_json(body, url, name)
            if page.last_serial is None and serial is not None:
                page = dataclasses.replace(page, last_serial=serial)
            return page
        return parse_project_html(body, url, name, serial)


def _key(name: NormalizedName) -> str:
    return f"project:{name}"


def _older(answer: UpstreamPage, cached: PageMeta) -> bool:
    return answer.serial is not None and cached["serial"] is not None and answer.serial < cached["serial"]
