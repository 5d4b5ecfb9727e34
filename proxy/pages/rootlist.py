"""The root project list (``/simple/``): tens of megabytes upstream, so it never lives in memory.

A refresh streams upstream's list to disk, pulls the names out with a streaming parser (ijson for JSON,
html.parser fed in chunks for HTML), and writes our JSON and HTML renderings, each with a gzip twin that
aiohttp's FileResponse serves to clients accepting gzip. Requests are answered from those files by sendfile.
"""

from __future__ import annotations

import asyncio
import gzip
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html.parser import HTMLParser
from itertools import islice
from pathlib import Path
from typing import BinaryIO

import ijson
import structlog

from proxy.clock import Clock
from proxy.errors import UpstreamError
from proxy.index.model import PageFormat
from proxy.index.render import render_root_html, render_root_json
from proxy.pages.cache import CacheOutcome
from proxy.pages.gcpause import collections_paused
from proxy.pages.store import PageMeta, PageStore
from proxy.pages.upstream import FetchStatus, Upstream
from proxy.settings import Settings

log = structlog.get_logger(__name__)

_RECORD_KEY = "root"
_BATCH = 4096


@dataclass(frozen=True, slots=True)
class RootResult:
    json_path: Path
    html_path: Path
    outcome: CacheOutcome
    stale_reason: str | None = None

    def path_for(self, fmt: PageFormat) -> Path:
        return self.json_path if fmt.is_json else self.html_path


class RootList:
    def __init__(
        self, upstream: Upstream, store: PageStore, directory: Path, clock: Clock, settings: Settings
    ) -> None:
        self._upstream = upstream
        self._store = store
        self._directory = directory
        self._clock = clock
        self._settings = settings
        self._inflight: asyncio.Task[RootResult] | None = None
        directory.mkdir(parents=True, exist_ok=True)

    @property
    def _json(self) -> Path:
        return self._directory / "simple.json"

    @property
    def _html(self) -> Path:
        return self._directory / "simple.html"

    async def current(self) -> RootResult:
        record = await self._store.get_meta(_RECORD_KEY)
        if record is not None and self._clock.now() - record["fetched_at"] < self._settings.cache_root_ttl:
            return RootResult(self._json, self._html, CacheOutcome.HIT)
        if self._inflight is None:
            self._inflight = asyncio.create_task(self._refresh(record))
            self._inflight.add_done_callback(lambda _: setattr(self, "_inflight", None))
        return await asyncio.shield(self._inflight)

    async def _refresh(self, cached: PageMeta | None) -> RootResult:
        raw = self._directory / "upstream.partial"
        try:
            answer = await self._upstream.fetch_root(raw, cached["etag"] if cached else None)
            if answer.status is FetchStatus.NOT_FOUND:
                raise UpstreamError("upstream has no root project list (HTTP 404)")
            if answer.status is FetchStatus.FOUND:
                is_json = "json" in answer.content_type
                await asyncio.to_thread(self._rebuild_paused, raw, is_json, answer.serial)
        except (UpstreamError, ValueError, OSError) as exc:
            raw.unlink(missing_ok=True)
            if cached is not None:
                log.warning("upstream_failed_serving_stale", project="/", error=str(exc))
                return RootResult(self._json, self._html, CacheOutcome.STALE, str(exc))
            if isinstance(exc, UpstreamError):
                raise
            raise UpstreamError(f"cannot read upstream's root project list: {exc}") from None
        outcome = CacheOutcome.MISS if answer.status is FetchStatus.FOUND else CacheOutcome.REVALIDATED
        record = PageMeta(
            found=True,
            url=answer.url,
            content_type=answer.content_type,
            etag=answer.etag if answer.status is FetchStatus.FOUND or cached is None else cached["etag"],
            serial=answer.serial,
            fetched_at=self._clock.now(),
            version="",
        )
        await self._store.put(_RECORD_KEY, record)
        return RootResult(self._json, self._html, outcome)

    def _rebuild_paused(self, raw: Path, is_json: bool, serial: int | None) -> None:
        with collections_paused():  # hundreds of thousands of names
            self._rebuild(raw, is_json, serial)

    def _rebuild(self, raw: Path, is_json: bool, serial: int | None) -> None:
        """In a worker thread: upstream file -> names -> our two renderings (+ gzip), then swap them in."""
        names_path = self._directory / "names.partial"
        try:
            with raw.open("rb") as source, names_path.open("w", encoding="utf-8") as names_out:
                names = _json_names(source) if is_json else _html_names(source)
                count = 0
                for name in names:
                    if "\n" not in name:
                        names_out.write(name + "\n")
                        count += 1
            if count == 0:
                raise ValueError("upstream's root project list has no projects")
            _write_rendering(self._json, render_root_json(_read_names(names_path), serial))
            _write_rendering(self._html, render_root_html(_read_names(names_path)))
            log.info("root_list_rebuilt", projects=count)
        finally:
            raw.unlink(missing_ok=True)
            names_path.unlink(missing_ok=True)


def _json_names(source: BinaryIO) -> Iterator[str]:
    for name in ijson.items(source, "projects.item.name"):
        if isinstance(name, str):
            yield name


def _html_names(source: BinaryIO) -> Iterator[str]:
    parser = _AnchorText()
    while chunk := source.read(1 << 20):
        parser.feed(chunk.decode("utf-8", errors="replace"))
        yield from parser.take()
    parser.close()
    yield from parser.take()


class _AnchorText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self._in_anchor = False
        self._text: list[str] = []
        self._names: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self._in_anchor, self._text = True, []

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._in_anchor:
            self._in_anchor = False
            name = "".join(self._text).strip()
            if name:
                self._names.append(name)

    def handle_data(self, data: str) -> None:
        if self._in_anchor:
            self._text.append(data)

    def take(self) -> list[str]:
        names, self._names = self._names, []
        return names


def _read_names(path: Path) -> Iterator[str]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            yield line.rstrip("\n")


def _write_rendering(target: Path, chunks: Iterable[bytes]) -> None:
    partial = target.with_name(target.name + ".partial")
    partial_gz = target.with_name(target.name + ".gz.partial")
    with partial.open("wb") as plain, gzip.open(partial_gz, "wb", compresslevel=6) as packed:
        iterator = iter(chunks)
        while batch := b"".join(islice(iterator, _BATCH)):
            plain.write(batch)
            packed.write(batch)
    # Swap the gzip twin first: a client may briefly get the new list compressed and the old one plain,
    # both complete; never a missing or partial file.
    os.replace(partial_gz, target.with_name(target.name + ".gz"))
    os.replace(partial, target)
