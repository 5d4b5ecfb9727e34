"""Project pages with freshness: TTL, ETag revalidation, stale-if-error, serials that never go backwards.

One upstream request per project at a time, however many clients ask (single flight); the refresh runs as its
own task so a client that hangs up does not cancel it for the others.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
from collections import OrderedDict
from dataclasses import dataclass

import structlog

from proxy.clock import Clock
from proxy.errors import NotFound, UpstreamError
from proxy.model import ProjectPage
from proxy.names import NormalizedName
from proxy.parse import UpstreamPageError, parse_project_html, parse_project_json
from proxy.settings import Settings
from proxy.store import PageRecord, PageStore
from proxy.upstream import FetchStatus, Upstream, UpstreamPage

log = structlog.get_logger(__name__)

PARSED_PAGES_IN_MEMORY = 2048
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
    # Changes whenever the page content changes: part of rendered-bytes cache keys and of ETags.
    version: str
    stale_reason: str | None = None


class ProjectNotFound(NotFound):
    def __init__(self, name: str, outcome: CacheOutcome) -> None:
        super().__init__(f"project {name!r} does not exist upstream")
        self.outcome = outcome


class PageCache:
    def __init__(self, upstream: Upstream, store: PageStore, clock: Clock, settings: Settings) -> None:
        self._upstream = upstream
        self._store = store
        self._clock = clock
        self._settings = settings
        self._inflight: dict[NormalizedName, asyncio.Task[PageResult]] = {}
        self._parsed: OrderedDict[NormalizedName, tuple[str, ProjectPage]] = OrderedDict()
        self._failures: dict[NormalizedName, tuple[float, str]] = {}

    async def project(self, name: NormalizedName, *, max_age: float | None = None) -> PageResult:
        """The page for ``name``; ``max_age`` overrides the TTL (0 forces a revalidation)."""
        record = await self._store.get(_key(name))
        ttl = self._ttl(record) if max_age is None else max_age
        if record is not None and self._clock.now() - record["fetched_at"] < ttl:
            return self._result(name, record, CacheOutcome.HIT)
        failure = self._failures.get(name)
        if (
            record is not None
            and failure is not None
            and self._clock.now() - failure[0] < FAILURE_BACKOFF_SECONDS
            and self._clock.now() - record["fetched_at"] < self._stale_limit()
        ):
            return self._result(name, record, CacheOutcome.STALE, stale_reason=failure[1])
        task = self._inflight.get(name)
        if task is None:
            task = asyncio.create_task(self._refresh(name, record))
            self._inflight[name] = task
            task.add_done_callback(lambda _: self._inflight.pop(name, None))
        return await asyncio.shield(task)

    async def forget(self, name: NormalizedName) -> bool:
        self._parsed.pop(name, None)
        return await self._store.delete(_key(name))

    def _ttl(self, record: PageRecord | None) -> float:
        if record is not None and not record["found"]:
            return self._settings.cache_not_found_ttl
        return self._settings.cache_page_ttl

    async def _refresh(self, name: NormalizedName, cached: PageRecord | None) -> PageResult:
        etag = cached["etag"] if cached is not None and cached["found"] else None
        try:
            answer = await self._upstream.fetch_project(name, etag)
            if answer.status is FetchStatus.FOUND:
                # Parse before storing: a page we cannot read must not replace one we can.
                self._parse(name, answer.body, answer.url, answer.content_type, answer.serial)
        except (UpstreamError, UpstreamPageError) as exc:
            self._failures[name] = (self._clock.now(), str(exc))
            if cached is not None and self._clock.now() - cached["fetched_at"] < self._stale_limit():
                log.warning("upstream_failed_serving_stale", project=name, error=str(exc))
                return self._result(name, cached, CacheOutcome.STALE, stale_reason=str(exc))
            if isinstance(exc, UpstreamPageError):
                raise UpstreamError(str(exc)) from None
            raise
        self._failures.pop(name, None)
        now = self._clock.now()
        if answer.status is FetchStatus.NOT_MODIFIED and cached is not None:
            record = PageRecord(**{**cached, "fetched_at": now})
            await self._store.put(_key(name), record)
            return self._result(name, record, CacheOutcome.REVALIDATED)
        if answer.status is FetchStatus.NOT_FOUND:
            record = PageRecord(
                found=False, url=answer.url, body=b"", content_type="", etag=None, serial=None, fetched_at=now
            )
            await self._store.put(_key(name), record)
            return self._result(name, record, CacheOutcome.MISS)
        if cached is not None and _older(answer, cached):
            # A lagging mirror or CDN node: keep the newer page we have (X-PyPI-Last-Serial never goes back).
            log.warning(
                "upstream_serial_older",
                project=name,
                cached_serial=cached["serial"],
                upstream_serial=answer.serial,
            )
            record = PageRecord(**{**cached, "fetched_at": now})
            await self._store.put(_key(name), record)
            return self._result(name, record, CacheOutcome.REVALIDATED)
        record = PageRecord(
            found=True,
            url=answer.url,
            body=answer.body,
            content_type=answer.content_type,
            etag=answer.etag,
            serial=answer.serial,
            fetched_at=now,
        )
        await self._store.put(_key(name), record)
        return self._result(name, record, CacheOutcome.MISS)

    def _stale_limit(self) -> float:
        return self._settings.cache_stale_if_error

    def _result(
        self, name: NormalizedName, record: PageRecord, outcome: CacheOutcome, stale_reason: str | None = None
    ) -> PageResult:
        if not record["found"]:
            raise ProjectNotFound(name, outcome)
        version, page = self._parse(
            name, record["body"], record["url"], record["content_type"], record["serial"]
        )
        return PageResult(page, outcome, record["fetched_at"], version, stale_reason)

    def _parse(
        self, name: NormalizedName, body: bytes, url: str, content_type: str, serial: int | None
    ) -> tuple[str, ProjectPage]:
        version = hashlib.sha256(body).hexdigest()[:24]
        memo = self._parsed.get(name)
        if memo is not None and memo[0] == version:
            self._parsed.move_to_end(name)
            return memo
        if "json" in content_type:
            page = parse_project_json(body, url, name)
            if page.last_serial is None and serial is not None:
                page = ProjectPage(page.name, page.files, page.versions, serial)
        else:
            page = parse_project_html(body, url, name, serial)
        self._parsed[name] = (version, page)
        if len(self._parsed) > PARSED_PAGES_IN_MEMORY:
            self._parsed.popitem(last=False)
        return version, page


def _key(name: NormalizedName) -> str:
    return f"project:{name}"


def _older(answer: UpstreamPage, cached: PageRecord) -> bool:
    return answer.serial is not None and cached["serial"] is not None and answer.serial < cached["serial"]
