"""The upstream index: a small protocol and its HTTP implementation.

aiohttp's exceptions stop here: callers see only proxy.errors (UpstreamError, UpstreamTimeout, ...).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import ssl
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiofiles
import aiohttp

from proxy import __version__
from proxy.errors import UpstreamError, UpstreamNotFound, UpstreamTimeout
from proxy.names import NormalizedName
from proxy.settings import Settings

# What we ask upstream for: PEP 691 JSON first, HTML only from an index that has nothing else.
UPSTREAM_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
)
USER_AGENT = (
    f"wheelfarm/{__version__} (+https://github.com/wheelfarm/wheelfarm) aiohttp/{aiohttp.__version__}"
)


class FetchStatus(enum.Enum):
    FOUND = "found"
    NOT_MODIFIED = "not_modified"
    NOT_FOUND = "not_found"


@dataclass(frozen=True, slots=True)
class UpstreamPage:
    status: FetchStatus
    url: str
    body: bytes = b""
    content_type: str = ""
    etag: str | None = None
    serial: int | None = None


@dataclass(frozen=True, slots=True)
class UpstreamFile:
    """An open upstream download. ``length`` is the announced Content-Length, if any."""

    length: int | None
    chunks: AsyncIterator[bytes]


class Upstream(Protocol):
    """Every source of pages and files implements this; layers wrap it (see STYLE.md, simple-repository)."""

    async def fetch_project(self, name: NormalizedName, etag: str | None) -> UpstreamPage: ...

    async def fetch_root(self, destination: Path, etag: str | None) -> UpstreamPage:
        """Stream the root project list into ``destination``; the returned page has an empty body."""
        ...

    def open_file(self, url: str) -> contextlib.AbstractAsyncContextManager[UpstreamFile]: ...


def make_ssl_context(ca_bundle: Path | None) -> ssl.SSLContext:
    """The system trust store (not certifi: corporate and test CAs live there), plus an optional CA bundle."""
    context = ssl.create_default_context()
    if ca_bundle is not None:
        context.load_verify_locations(cafile=str(ca_bundle))
    return context


def make_session(settings: Settings) -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=settings.upstream_connect_timeout,
        sock_read=settings.upstream_read_timeout,
    )
    connector = aiohttp.TCPConnector(
        limit=settings.upstream_max_connections,
        ssl=make_ssl_context(settings.upstream_ca_bundle),
        ttl_dns_cache=300,
    )
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        headers={"User-Agent": USER_AGENT},
        auto_decompress=True,
    )


class HttpUpstream:
    """PyPI's simple API (or any PEP 503/691 index) over HTTP."""

    def __init__(self, session: aiohttp.ClientSession, simple_url: str, *, page_timeout: float) -> None:
        self._session = session
        self._simple_url = simple_url if simple_url.endswith("/") else simple_url + "/"
        self._page_timeout = page_timeout

    async def fetch_project(self, name: NormalizedName, etag: str | None) -> UpstreamPage:
        url = f"{self._simple_url}{name}/"
        headers = {"Accept": UPSTREAM_ACCEPT}
        if etag:
            headers["If-None-Match"] = etag
        with _translated_errors(f"project page {name!r}"):
            async with asyncio.timeout(self._page_timeout):
                async with self._session.get(url, headers=headers) as response:
                    return await self._page_from(response, url)

    async def fetch_root(self, destination: Path, etag: str | None) -> UpstreamPage:
        headers = {"Accept": UPSTREAM_ACCEPT}
        if etag:
            headers["If-None-Match"] = etag
        with _translated_errors("root project list"):
            async with self._session.get(self._simple_url, headers=headers) as response:
                if response.status in (304, 404):
                    return await self._page_from(response, self._simple_url)
                _raise_for_status(response.status, "root project list")
                async with aiofiles.open(destination, "wb") as sink:
                    async for chunk in response.content.iter_chunked(1 << 18):
                        await sink.write(chunk)
                return UpstreamPage(
                    status=FetchStatus.FOUND,
                    url=str(response.url),
                    content_type=response.content_type,
                    etag=response.headers.get("ETag"),
                    serial=_serial(response),
                )

    @contextlib.asynccontextmanager
    async def open_file(self, url: str) -> AsyncIterator[UpstreamFile]:
        what = f"file {url.rsplit('/', 1)[-1]!r}"
        with _translated_errors(what):
            async with self._session.get(url) as response:
                if response.status == 404:
                    raise UpstreamNotFound(f"upstream has no file at {url}")
                _raise_for_status(response.status, f"file {url}")
                yield UpstreamFile(length=response.content_length, chunks=_chunks(response, what))

    async def _page_from(self, response: aiohttp.ClientResponse, url: str) -> UpstreamPage:
        if response.status == 304:
            return UpstreamPage(FetchStatus.NOT_MODIFIED, url, etag=response.headers.get("ETag"))
        if response.status == 404:
            return UpstreamPage(FetchStatus.NOT_FOUND, url)
        _raise_for_status(response.status, url)
        return UpstreamPage(
            status=FetchStatus.FOUND,
            url=str(response.url),
            body=await response.read(),
            content_type=response.content_type,
            etag=response.headers.get("ETag"),
            serial=_serial(response),
        )


async def _chunks(response: aiohttp.ClientResponse, what: str) -> AsyncIterator[bytes]:
    with _translated_errors(what):
        async for chunk in response.content.iter_chunked(1 << 18):
            yield chunk


def _raise_for_status(status: int, what: str) -> None:
    if status != 200:
        raise UpstreamError(f"upstream answered HTTP {status} for {what}")


def _serial(response: aiohttp.ClientResponse) -> int | None:
    value = response.headers.get("X-PyPI-Last-Serial", "")
    return int(value) if value.strip().isdigit() else None


@contextlib.contextmanager
def _translated_errors(what: str) -> Iterator[None]:
    try:
        yield
    except TimeoutError:
        raise UpstreamTimeout(f"upstream timed out on {what}") from None
    except aiohttp.ClientPayloadError as exc:
        raise UpstreamError(f"upstream broke off {what}: {exc}") from None
    except aiohttp.ClientError as exc:
        raise UpstreamError(f"cannot reach upstream for {what}: {exc}") from None
