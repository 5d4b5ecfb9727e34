"""Handlers for ``/files/<project>/<key>/<filename>`` (plus ``.metadata`` and ``.provenance``).

A cached file is served by FileResponse: sendfile, ETag, If-None-Match and Range (RFC 9110 section 14).
A file not yet cached is streamed from the shared download as it arrives; the last byte is held back until
the hash is verified, and a failed download aborts the connection, so no client takes a bad file for a
whole one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, BinaryIO

import structlog
from aiohttp import web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest

from proxy.errors import NotFound, WheelfarmError
from proxy.index.model import DistFile, file_key
from proxy.index.names import NormalizedName
from proxy.index.urls import METADATA_SUFFIX, PROVENANCE_SUFFIX
from proxy.pages.source import PageSource
from proxy.redact import redact
from proxy.settings import Settings
from proxy.storage.files import Download, DownloadState, FileSource, FileStore
from proxy.web.pages import project_name
from proxy.web.services import CACHE_OUTCOME, SERVICES, RequestOutcome

log = structlog.get_logger(__name__)

CHUNK = 1 << 18
SENDFILE_SLICE = 1 << 20
IMMUTABLE = "max-age=31536000, immutable"  # RFC 8246: content-addressed files never change


async def file(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    raw_project, key, filename = (request.match_info[k] for k in ("project", "key", "filename"))
    project = project_name(raw_project)
    if project != raw_project or not services.files.valid_key(key) or not _safe_filename(filename):
        raise NotFound(f"no such file: {request.path}")
    if services.policy.quarantined(project):
        raise NotFound(f"{project} is quarantined upstream (PEP 792): it offers no files")
    recheck_after = services.settings.cache_not_found_ttl
    if filename.endswith(METADATA_SUFFIX):
        source = await _metadata_source(
            services.pages, project, key, filename.removesuffix(METADATA_SUFFIX), recheck_after
        )
        content_type = "text/plain; charset=utf-8"
    elif filename.endswith(PROVENANCE_SUFFIX):
        source = await _provenance_source(
            services.pages, project, key, filename.removesuffix(PROVENANCE_SUFFIX), recheck_after
        )
        content_type = "application/json"
    else:
        cached = await services.files.cached(key) if _keeps(services.settings, key) else None
        if cached is not None:  # content addressed: a cached blob needs no page lookup
            request[CACHE_OUTCOME] = RequestOutcome.HIT
            return _cached_response(services.files, key, cached, "application/octet-stream")
        dist = await _listed_file(services.pages, project, key, filename, recheck_after)
        source = FileSource(key, dist.url, dist.sha256, dist.size)
        if source.sha256 is None and not _keeps(services.settings, key):
            return await _pass_through(request, services.files, source, "application/octet-stream")
        return await _serve_missing(request, services.files, source, "application/octet-stream")
    if source.sha256 is None and not _keeps(services.settings, source.key):
        return await _pass_through(request, services.files, source, content_type)
    return await serve(request, services.files, source, content_type)


def _keeps(settings: Settings, key: str) -> bool:
    """Is this file kept? One upstream gave no sha256 for (a ``url-`` key) only when the operator says so:
    it cannot be verified, so by default it is passed through and nothing is kept."""
    return not key.startswith("url-") or settings.cache_files_without_hash == "cache"


async def _pass_through(
    request: web.Request, store: FileStore, source: FileSource, content_type: str
) -> web.StreamResponse:
    """Stream a file that cannot be verified from upstream to the client, keeping nothing of it."""
    request[CACHE_OUTCOME] = RequestOutcome.MISS
    async with store.upstream.open_file(source.url) as upstream_file:
        response = web.StreamResponse(
            headers={
                "Content-Type": content_type,
                "Cache-Control": "no-store",
                "X-Wheelfarm-Cache": RequestOutcome.MISS.value,
            }
        )
        if upstream_file.length is not None:
            response.content_length = upstream_file.length
        await response.prepare(request)
        try:
            async for chunk in upstream_file.chunks:
                await response.write(chunk)
        except WheelfarmError as exc:  # upstream broke off: the client must not take it for a whole file
            log.warning("pass_through_aborted", url=redact(source.url), reason=exc.message)
            if request.transport is not None:
                request.transport.abort()
            return response
    await response.write_eof()
    return response


async def serve(
    request: web.Request, store: FileStore, source: FileSource, content_type: str
) -> web.StreamResponse:
    cached = await store.cached(source.key)
    if cached is not None:
        request[CACHE_OUTCOME] = RequestOutcome.HIT
        return _cached_response(store, source.key, cached, content_type)
    return await _serve_missing(request, store, source, content_type)


async def _serve_missing(
    request: web.Request, store: FileStore, source: FileSource, content_type: str
) -> web.StreamResponse:
    """Join (or start) the download of a file found missing, and stream it as it arrives."""
    request[CACHE_OUTCOME] = RequestOutcome.MISS
    download = store.download(source)
    # No headers before the first byte: a download that fails at once becomes a clear error answer.
    await download.wait_for_more(0)
    if download.state is DownloadState.FAILED and download.error is not None:
        raise download.error
    # A Range request on a file still downloading gets the whole file (RFC 9110 section 14.2 lets a server
    # ignore Range); uv then reads what it needs, and the one shared download is not multiplied.
    with store.index.lease(source.key):
        return await _stream(request, download, content_type)


class GrowingFileResponse(web.StreamResponse):
    """A response whose body is sent with sendfile from a file still being written; counts what it sent
    (sendfile bypasses the payload writer's own count)."""

    bytes_sent = 0


async def _stream(request: web.Request, download: Download, content_type: str) -> web.StreamResponse:
    response = GrowingFileResponse(
        headers={
            "Content-Type": content_type,
            "Cache-Control": IMMUTABLE,
            "X-Wheelfarm-Cache": RequestOutcome.MISS.value,
        }
    )
    if download.length is not None:
        response.content_length = download.length
    if download.source.sha256 is not None:
        response.headers["ETag"] = f'"{download.source.sha256}"'
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    reader = await _open_upload(download)
    if reader is None:  # finished (committed) or failed between our checks
        await download.wait_done()
        if download.state is not DownloadState.DONE:
            return _abort(request, response, download)
        reader = await asyncio.to_thread(download.final_path.open, "rb")
    try:
        return await _send_growing(request, response, download, reader)
    finally:
        await asyncio.to_thread(reader.close)


async def _open_upload(download: Download) -> BinaryIO | None:
    """The download's upload opened for reading; None once it is gone (committed or aborted)."""
    if download.upload is None:  # never begun: its task failed at once
        return None
    try:
        return await asyncio.to_thread(download.upload.path.open, "rb")
    except FileNotFoundError:
        return None


async def _send_growing(
    request: web.Request, response: GrowingFileResponse, download: Download, reader: BinaryIO
) -> web.StreamResponse:
    loop = asyncio.get_running_loop()
    while True:
        state = download.state
        if state is DownloadState.FAILED:
            return _abort(request, response, download)
        # Until the hash is checked, keep the last byte back: the body cannot look complete before then.
        limit = download.written if state is DownloadState.DONE else download.written - 1
        sent = response.bytes_sent
        if sent < limit:
            # sendfile: zero-copy from the page cache, no thread hop. A lagging client catches up in
            # slices, so one client's backlog never holds the loop while others wait for a first byte.
            transport = request.transport
            if transport is None or transport.is_closing():
                return response  # the client hung up; the shared download goes on for the others
            try:
                count = await loop.sendfile(transport, reader, sent, min(limit - sent, SENDFILE_SLICE))
            except ConnectionError:
                return response
            if not count:  # the file ends before what was counted as written: never a short success
                return _abort(request, response, download)
            response.bytes_sent += count
        elif state is DownloadState.DONE:
            break
        else:
            await download.wait_for_more(sent + 1)
    await response.write_eof()
    return response


def _abort(request: web.Request, response: web.StreamResponse, download: Download) -> web.StreamResponse:
    """Cut the connection mid-body: with Content-Length (or chunked framing) the client sees a failure."""
    reason = download.error.message if download.error else "download failed"
    log.warning("client_connection_aborted", key=download.source.key, reason=reason)
    if request.transport is not None:
        request.transport.abort()
    return response  # aiohttp's write_eof on the closed transport is a quiet ConnectionError


class LeasedFileResponse(web.FileResponse):
    """A FileResponse whose file cannot be evicted while it is being sent (prepare sends it all)."""

    def __init__(self, path: Path, lease: Callable[[], AbstractContextManager[None]], **kwargs: Any) -> None:
        super().__init__(path, **kwargs)
        self._lease = lease

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        with self._lease():
            return await super().prepare(request)


def _cached_response(store: FileStore, key: str, path: Path, content_type: str) -> web.FileResponse:
    headers = {
        "Content-Type": content_type,
        "Cache-Control": IMMUTABLE,
        "X-Wheelfarm-Cache": RequestOutcome.HIT.value,
    }
    return LeasedFileResponse(path, lambda: store.index.lease(key), chunk_size=CHUNK, headers=headers)


async def _listed_file(
    pages: PageSource, project: NormalizedName, key: str, filename: str, recheck_after: float
) -> DistFile:
    """The page entry for ``key``. A key the page lacks may be a file uploaded since the page was cached, so
    the page is revalidated for it, but only once it is ``recheck_after`` seconds old ([cache]
    not_found_ttl): made-up keys cost at most one upstream page request per project in that time."""
    for max_age in (None, recheck_after):
        dist = (await pages.project(project, max_age=max_age)).page.file_by_key(key)
        if dist is not None:
            if dist.filename != filename:
                raise NotFound(f"{project} has no file {filename!r} with key {key}")
            return dist
    raise NotFound(f"{project} lists no file {filename!r} upstream (key {key})")


async def _metadata_source(
    pages: PageSource, project: NormalizedName, key: str, filename: str, recheck_after: float
) -> FileSource:
    dist = await _listed_file(pages, project, key, filename, recheck_after)
    if not dist.has_metadata:
        raise NotFound(f"upstream offers no metadata file (PEP 658) for {filename}")
    url = dist.url + METADATA_SUFFIX
    sha = dist.metadata_sha256
    return FileSource(sha if sha else file_key(DistFile(filename, url)), url, sha, None)


async def _provenance_source(
    pages: PageSource, project: NormalizedName, key: str, filename: str, recheck_after: float
) -> FileSource:
    dist = await _listed_file(pages, project, key, filename, recheck_after)
    if dist.provenance is None:
        raise NotFound(f"upstream offers no provenance (PEP 740) for {filename}")
    return FileSource(file_key(DistFile(filename, dist.provenance)), dist.provenance, None, None)


def _safe_filename(filename: str) -> bool:
    return bool(filename) and "/" not in filename and "\\" not in filename and not filename.startswith(".")
