"""The upstream index: a small protocol and its HTTP implementation.

aiohttp's exceptions stop here: callers see only proxy.errors (UpstreamError, UpstreamTimeout, ...).
Every URL fetched, and every redirect followed (by hand: at most MAX_REDIRECTS, each one checked), must pass
the host policy (proxy/pages/hosts.py); bodies are read within limits (proxy/pages/bodies.py); URLs in
messages never show credentials (proxy/redact.py).
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
from yarl import URL

from proxy import __version__
from proxy.errors import UpstreamError, UpstreamNotFound, UpstreamTimeout
from proxy.index.names import NormalizedName
from proxy.pages.bodies import ACCEPT_ENCODING, decoded_chunks, read_bounded
from proxy.pages.hosts import GuardedResolver, HostPolicy
from proxy.redact import redact
from proxy.settings import Settings

# What we ask upstream for: PEP 691 JSON first, HTML only from an index that has nothing else.
UPSTREAM_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, text/html;q=0.01"
)
USER_AGENT = (
    f"wheelfarm/{__version__} (+https://github.com/wheelfarm/wheelfarm) aiohttp/{aiohttp.__version__}"
)
MAX_REDIRECTS = 5
_REDIRECTS = (301, 302, 303, 307, 308)
MAX_FILE_BYTES = 64 << 30  # a file's own size, when known, is checked by the file store


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


def host_policy(settings: Settings) -> HostPolicy:
    return HostPolicy.for_upstream(
        settings.upstream_simple_url, settings.upstream_file_hosts, settings.upstream_allow_private_networks
    )


def make_session(settings: Settings) -> aiohttp.ClientSession:
    timeout = aiohttp.ClientTimeout(
        total=None,
        connect=settings.upstream_connect_timeout,
        sock_read=settings.upstream_read_timeout,
    )
    connector = aiohttp.TCPConnector(
        limit=settings.upstream_max_connections,
        ssl=make_ssl_context(settings.upstream_ca_bundle),
        ttl_dns_cache=None,  # every connection resolves (the guard sees what a name resolves to now)
        resolver=GuardedResolver(host_policy(settings)),
    )
    return aiohttp.ClientSession(
        timeout=timeout,
        connector=connector,
        headers={"User-Agent": USER_AGENT, "Accept-Encoding": ACCEPT_ENCODING},
        auto_decompress=False,  # bodies are inflated by proxy/pages/bodies.py, within limits
    )


class HttpUpstream:
    """PyPI's simple API (or any PEP 503/691 index) over HTTP."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        simple_url: str,
        *,
        page_timeout: float,
        policy: HostPolicy | None = None,
        max_page_bytes: int = 64 << 20,
        max_root_bytes: int = 1 << 30,
    ) -> None:
        self._session = session
        self._simple_url = simple_url if simple_url.endswith("/") else simple_url + "/"
        self._page_timeout = page_timeout
        self._policy = policy or HostPolicy.for_upstream(self._simple_url, (), allow_private=False)
        self._max_page = max_page_bytes
        self._max_root = max_root_bytes

    async def fetch_project(self, name: NormalizedName, etag: str | None) -> UpstreamPage:
        url = f"{self._simple_url}{name}/"
        headers = {"Accept": UPSTREAM_ACCEPT}
        if etag:
            headers["If-None-Match"] = etag
        what = f"project page {name!r}"
        with _translated_errors(what):
            async with asyncio.timeout(self._page_timeout), self._get(url, headers, what) as response:
                return await self._page_from(response, url, what)

    async def fetch_root(self, destination: Path, etag: str | None) -> UpstreamPage:
        headers = {"Accept": UPSTREAM_ACCEPT}
        if etag:
            headers["If-None-Match"] = etag
        what = "root project list"
        with _translated_errors(what):
            async with self._get(self._simple_url, headers, what) as response:
                if response.status in (304, 404):
                    return await self._page_from(response, self._simple_url, what)
                _raise_for_status(response.status, what)
                async with aiofiles.open(destination, "wb") as sink:
                    async for chunk in decoded_chunks(response, self._max_root, what):
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
        self._policy.check(url, what)
        async with contextlib.AsyncExitStack() as stack:
            # Only our own steps are translated: an error of the caller's while it holds the file (its
            # disk filling up, say) is not upstream's and must reach it as it is.
            with _translated_errors(what):
                response = await stack.enter_async_context(self._get(url, {}, what))
                if response.status == 404:
                    raise UpstreamNotFound(f"upstream has no file at {redact(url)}")
                _raise_for_status(response.status, f"file {redact(url)}")
            # A compressed body's Content-Length is not the file's size (it is inflated on the way).
            coded = response.headers.get("Content-Encoding", "").strip().lower() not in ("", "identity")
            yield UpstreamFile(
                length=None if coded else response.content_length, chunks=_chunks(response, what)
            )

    @contextlib.asynccontextmanager
    async def _get(
        self, url: str, headers: dict[str, str], what: str
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """GET, following redirects by hand: each hop must pass the host policy (RFC 9110 section 15.4)."""
        for _ in range(MAX_REDIRECTS + 1):
            response = await self._session.get(url, headers=headers, allow_redirects=False)
            if response.status not in _REDIRECTS or "Location" not in response.headers:
                try:
                    yield response
                finally:
                    response.release()
                return
            location = str(response.url.join(URL(response.headers["Location"])))
            response.release()
            self._policy.check(location, f"a redirect for {what}")
            url = location
        raise UpstreamError(f"upstream redirected {what} more than {MAX_REDIRECTS} times")

    async def _page_from(self, response: aiohttp.ClientResponse, url: str, what: str) -> UpstreamPage:
        if response.status == 304:
            return UpstreamPage(FetchStatus.NOT_MODIFIED, url, etag=response.headers.get("ETag"))
        if response.status == 404:
            return UpstreamPage(FetchStatus.NOT_FOUND, url)
        _raise_for_status(response.status, redact(url))
        return UpstreamPage(
            status=FetchStatus.FOUND,
            url=str(response.url),
            body=await read_bounded(response, self._max_page, what),
            content_type=response.content_type,
            etag=response.headers.get("ETag"),
            serial=_serial(response),
        )


async def _chunks(response: aiohttp.ClientResponse, what: str) -> AsyncIterator[bytes]:
    with _translated_errors(what):
        async for chunk in decoded_chunks(response, MAX_FILE_BYTES, what):
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
        raise UpstreamError(f"cannot reach upstream for {what}: {redact(str(exc))}") from None
    except OSError as exc:  # the host policy's resolver refusing a name, among others
        raise UpstreamError(f"cannot reach upstream for {what}: {redact(str(exc))}") from None
