"""A fake of PyPI's simple API, served from in-memory state that tests change between requests.

It speaks PEP 503 HTML and PEP 691 JSON (chosen by the Accept header, like warehouse), with the
PEP 592 yank, PEP 658/714 core metadata, PEP 700 versions/size/upload-time and PEP 740 provenance
fields, plus fault knobs (status codes, delays, truncated and corrupted downloads) and request
counters. `FakeUpstreamServer` runs it on 127.0.0.1 in a background thread.
"""

from __future__ import annotations

import asyncio
import hashlib
import html
import json
import re
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final
from urllib.parse import quote

from aiohttp import web
from packaging.utils import (
    InvalidSdistFilename,
    InvalidWheelFilename,
    parse_sdist_filename,
    parse_wheel_filename,
)
from packaging.version import Version
from servers import ServerThread

JSON_V1: Final = "application/vnd.pypi.simple.v1+json"
HTML_V1: Final = "application/vnd.pypi.simple.v1+html"
TEXT_HTML: Final = "text/html"
# The key under which requests for the root list /simple/ are counted (no project can be named "/").
ROOT_PAGE: Final = "/"
DEFAULT_UPLOAD_TIME: Final = "2024-01-02T03:04:05.000000Z"

_SEPARATORS = re.compile(r"[-_.]+")
_INVERT = bytes(255 - i for i in range(256))


def _normalise(name: str) -> str:
    # PEP 503: lower case, and every run of "-", "_" and "." becomes a single "-".
    return _SEPARATORS.sub("-", name).lower()


@dataclass
class FakeFile:
    """One distribution file on the fake index. Mutable: tests may edit it, then `FakeIndex.touch`."""

    filename: str
    content: bytes = field(repr=False)
    # PEP 592: False, True (yanked without a reason), or the reason.
    yanked: bool | str = False
    requires_python: str | None = None
    # PEP 658: the file's core metadata, served at `<url>.metadata` and advertised with its hash.
    metadata: bytes | None = field(default=None, repr=False)
    # PEP 700: ISO 8601 in UTC; None leaves the key out.
    upload_time: str | None = DEFAULT_UPLOAD_TIME
    # PEP 740: the provenance JSON document, served at `/provenance/<filename>`.
    provenance: bytes | None = field(default=None, repr=False)
    # Hostile modes: list the file at this URL instead of the index's own, and/or without any hash.
    listed_url: str | None = None
    unhashed: bool = False

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.content).hexdigest()

    @property
    def version(self) -> Version | None:
        """The version in a wheel or sdist filename (None for names packaging cannot parse)."""
        try:
            if self.filename.endswith(".whl"):
                return parse_wheel_filename(self.filename)[1]
            return parse_sdist_filename(self.filename)[1]
        except (InvalidWheelFilename, InvalidSdistFilename):
            return None

    @classmethod
    def from_path(cls, path: Path, **fields: Any) -> FakeFile:
        """A FakeFile named and filled after a file on disk; `fields` set the other attributes."""
        return cls(filename=path.name, content=path.read_bytes(), **fields)


def _sort_key(file: FakeFile) -> tuple[bool, Version, str]:
    # Like warehouse: files ordered by (version, filename), so bodies and ETags are stable.
    version = file.version
    return (version is None, version or Version("0"), file.filename)


@dataclass
class FakeIndex:
    """The fake index's state: projects, serials, fault knobs and counters. Tests edit it freely."""

    # PEP 503 normalised name -> files. Use add_file/remove_file/yank/... to keep serials current.
    projects: dict[str, list[FakeFile]] = field(default_factory=dict)
    # Per-project last serial, as PyPI's X-PyPI-Last-Serial; bumped by touch().
    serials: dict[str, int] = field(default_factory=dict)
    # Announce this serial instead of the real one (header and JSON meta), e.g. a stale CDN copy.
    last_serial: dict[str, int] = field(default_factory=dict)
    api_version: str = "1.1"
    # PEP 792 project status: project -> (status, reason or None). Files stay listed (a careless index),
    # so a test can see that wheelfarm itself offers none for a quarantined project.
    statuses: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    # Hostile modes: answer a project page with exactly this (status, headers, body): redirects, gzip
    # bombs, huge pages.
    page_overrides: dict[str, tuple[int, dict[str, str], bytes]] = field(default_factory=dict)

    # Fault knobs.
    page_status: dict[str, int] = field(default_factory=dict)  # project -> answer this status instead
    page_delay: float = 0.0  # seconds to sleep before answering /simple/ requests
    root_status: int | None = None
    html_only: bool = False  # ignore Accept and serve text/html only, like an index without PEP 691
    file_delay: float = 0.0  # seconds to sleep before each chunk of a download
    slow_files: dict[str, float] = field(default_factory=dict)  # filename -> seconds before each chunk
    file_chunk: int = 64 * 1024
    truncate_files: dict[str, int] = field(default_factory=dict)  # filename -> bytes sent before drop
    corrupt_files: list[str] = field(default_factory=list)  # filenames served with other bytes

    # Counters: pages by normalised name (ROOT_PAGE for /simple/), downloads by filename.
    page_requests: Counter[str] = field(default_factory=Counter)
    file_requests: Counter[str] = field(default_factory=Counter)
    metadata_requests: Counter[str] = field(default_factory=Counter)  # by the distribution's filename
    provenance_requests: Counter[str] = field(default_factory=Counter)
    conditional_hits: Counter[str] = field(default_factory=Counter)  # 304 answers, keyed like pages

    # Serials are global and only grow, as on PyPI.
    _next_serial: int = field(default=1, init=False, repr=False)
    # Tests mutate the index from their thread while the server's loop renders from it.
    lock: threading.RLock = field(default_factory=threading.RLock, init=False, repr=False, compare=False)

    def touch(self, project: str) -> int:
        """Record a change to `project`: give it a new serial, higher than any before. Returns it."""
        with self.lock:
            serial = self._next_serial
            self._next_serial += 1
            self.serials[_normalise(project)] = serial
            return serial

    def add_file(self, project: str, file: FakeFile) -> FakeFile:
        with self.lock:
            if self.find(file.filename) is not None:
                raise ValueError(f"{file.filename} is already on the index (PyPI never reuses a filename)")
            self.projects.setdefault(_normalise(project), []).append(file)
            self.touch(project)
            return file

    def remove_file(self, filename: str) -> FakeFile:
        with self.lock:
            project, file = self._get(filename)
            self.projects[project].remove(file)
            self.touch(project)
            return file

    def remove_project(self, project: str) -> None:
        with self.lock:
            del self.projects[_normalise(project)]
            self.touch(project)

    def yank(self, filename: str, reason: bool | str = True) -> None:
        with self.lock:
            project, file = self._get(filename)
            file.yanked = reason
            self.touch(project)

    def unyank(self, filename: str) -> None:
        self.yank(filename, False)

    def yank_release(self, project: str, version: str, reason: bool | str = True) -> None:
        """Yank every file of one release, as PyPI does (PEP 592 yanks releases)."""
        with self.lock:
            for file in self.projects[_normalise(project)]:
                if file.version == Version(version):
                    file.yanked = reason
            self.touch(project)

    def find(self, filename: str) -> tuple[str, FakeFile] | None:
        """The (project, file) that has this filename, or None."""
        with self.lock:
            for project, files in self.projects.items():
                for file in files:
                    if file.filename == filename:
                        return project, file
            return None

    def file(self, filename: str) -> FakeFile:
        return self._get(filename)[1]

    def project_serial(self, project: str) -> int:
        with self.lock:
            return self.last_serial.get(project, self.serials.get(project, 0))

    def global_serial(self) -> int:
        with self.lock:
            return max([0, *self.serials.values()])

    def _get(self, filename: str) -> tuple[str, FakeFile]:
        found = self.find(filename)
        if found is None:
            raise KeyError(filename)
        return found


INDEX_KEY: Final = web.AppKey("index", FakeIndex)


def make_app(index: FakeIndex) -> web.Application:
    app = web.Application()
    app[INDEX_KEY] = index
    app.router.add_get("/simple", _redirect_to_root)
    app.router.add_get("/simple/", _root)
    app.router.add_get("/simple/{project}", _project)
    app.router.add_get("/simple/{project}/", _project)
    app.router.add_get("/files/{filename}", _file)
    app.router.add_get("/provenance/{filename}", _provenance)
    return app


class FakeUpstreamServer(ServerThread):
    """The fake index, running: `with FakeUpstreamServer(index) as server: server.simple_url`."""

    def __init__(self, index: FakeIndex) -> None:
        async def factory() -> web.Application:
            return make_app(index)

        super().__init__(factory, name="fake-upstream")
        self.index = index

    @property
    def simple_url(self) -> str:
        return f"{self.url}/simple/"

    def project_url(self, project: str) -> str:
        return f"{self.url}/simple/{project}/"

    def file_url(self, filename: str) -> str:
        return f"{self.url}/files/{quote(filename)}"


# Content negotiation (PEP 691). Offers in warehouse's order: on equal quality, text/html wins.
_OFFERS: Final = (TEXT_HTML, HTML_V1, JSON_V1)
_ALIASES: Final = {
    "application/vnd.pypi.simple.latest+json": JSON_V1,
    "application/vnd.pypi.simple.latest+html": HTML_V1,
}


def negotiate(accept: str | None) -> str:
    """The content type to serve for an Accept header. Never raises; text/html when nothing fits."""
    best, best_q = TEXT_HTML, 0.0
    ranges = _parse_accept(accept or "")
    for offer in _OFFERS:
        q = _quality(offer, ranges)
        if q > best_q:
            best, best_q = offer, q
    return best


def _parse_accept(accept: str) -> list[tuple[str, float]]:
    ranges = []
    for item in accept.split(","):
        media, *params = (part.strip() for part in item.split(";"))
        if not media:
            continue
        q = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0  # RFC 9110 section 12.4.2 qvalue; a malformed one counts as "not acceptable"
        media = media.lower()
        ranges.append((_ALIASES.get(media, media), q))
    return ranges


def _quality(offer: str, ranges: list[tuple[str, float]]) -> float:
    # RFC 9110 section 12.5.1: the most specific matching media range decides the quality.
    kind = offer.split("/")[0]
    best_specificity, q = 0, 0.0
    for media, media_q in ranges:
        specificity = 3 if media == offer else 2 if media == f"{kind}/*" else 1 if media == "*/*" else 0
        if specificity > best_specificity:
            best_specificity, q = specificity, media_q
    return q


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _etag_matches(if_none_match: str | None, etag: str) -> bool:
    # RFC 9110 section 13.1.2: If-None-Match uses the weak comparison; "*" matches any current entity.
    if not if_none_match:
        return False
    tags = [tag.strip().removeprefix("W/") for tag in if_none_match.split(",")]
    return "*" in tags or etag in tags


def _page_response(
    request: web.Request, key: str, body: bytes, content_type: str, serial: int
) -> web.Response:
    """The page, or 304 when If-None-Match has its ETag; `key` is the counters' key for the page."""
    index = request.app[INDEX_KEY]
    etag = _etag(body)
    headers = {"ETag": etag, "Vary": "Accept", "X-PyPI-Last-Serial": str(serial)}
    if _etag_matches(request.headers.get("If-None-Match"), etag):
        index.conditional_hits[key] += 1
        return web.Response(status=304, headers=headers)
    if content_type == TEXT_HTML:
        content_type = "text/html; charset=utf-8"
    return web.Response(body=body, headers={**headers, "Content-Type": content_type})


def _chosen_type(request: web.Request) -> str:
    return TEXT_HTML if request.app[INDEX_KEY].html_only else negotiate(request.headers.get("Accept"))


def _html_document(title: str, body_lines: list[str], api_version: str, serial: int) -> bytes:
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{html.escape(api_version)}">',
        f"    <title>{html.escape(title)}</title>",
        "  </head>",
        "  <body>",
        *(f"    {line}" for line in body_lines),
        "  </body>",
        "</html>",
        f"<!--SERIAL {serial}-->",  # as warehouse does; also makes the ETag change with the serial
        "",
    ]
    return "\n".join(lines).encode()


async def _redirect_to_root(request: web.Request) -> web.StreamResponse:
    raise web.HTTPMovedPermanently("/simple/")


async def _root(request: web.Request) -> web.StreamResponse:
    index = request.app[INDEX_KEY]
    index.page_requests[ROOT_PAGE] += 1
    if index.page_delay:
        await asyncio.sleep(index.page_delay)
    if index.root_status is not None:
        return _status_response(index.root_status)
    content_type = _chosen_type(request)
    with index.lock:
        names = sorted(index.projects)
        serial = index.global_serial()
        api_version = index.api_version
    if content_type == JSON_V1:
        document = {
            "meta": {"api-version": api_version, "_last-serial": serial},
            "projects": [{"name": name} for name in names],
        }
        body = json.dumps(document, indent=1).encode()
    else:
        links = [f'<a href="/simple/{quote(name)}/">{html.escape(name)}</a>' for name in names]
        body = _html_document("Simple index", links, api_version, serial)
    return _page_response(request, ROOT_PAGE, body, content_type, serial)


async def _project(request: web.Request) -> web.StreamResponse:
    index = request.app[INDEX_KEY]
    requested = request.match_info["project"]
    name = _normalise(requested)
    index.page_requests[name] += 1
    if requested != name or not request.path.endswith("/"):
        raise web.HTTPMovedPermanently(f"/simple/{quote(name)}/")  # PEP 503: redirect to the normal form
    if index.page_delay:
        await asyncio.sleep(index.page_delay)
    if name in index.page_status:
        return _status_response(index.page_status[name])
    if name in index.page_overrides:
        code, headers, raw = index.page_overrides[name]
        return web.Response(status=code, headers=headers, body=raw)
    content_type = _chosen_type(request)
    base = str(request.url.origin())
    with index.lock:
        if name not in index.projects:
            raise web.HTTPNotFound(text=f"no project {name!r} on the fake index")
        files = sorted(index.projects[name], key=_sort_key)
        serial = index.project_serial(name)
        status = index.statuses.get(name)
        if content_type == JSON_V1:
            body = _project_json(name, files, base, index.api_version, serial, status)
        else:
            body = _project_html(name, files, base, index.api_version, serial, status)
    return _page_response(request, name, body, content_type, serial)


Status = tuple[str, str | None] | None


def _project_json(
    name: str, files: list[FakeFile], base: str, api_version: str, serial: int, status: Status
) -> bytes:
    versions = {str(v): v for file in files if (v := file.version) is not None}
    document: dict[str, Any] = {
        "meta": {"api-version": api_version, "_last-serial": serial},
        "name": name,
        "versions": sorted(versions, key=versions.__getitem__),  # PEP 700
        "files": [_file_json(file, base) for file in files],
    }
    if status is not None:  # PEP 792
        document["project-status"] = {"status": status[0], **({"reason": status[1]} if status[1] else {})}
    return json.dumps(document, indent=1).encode()


def _file_json(file: FakeFile, base: str) -> dict[str, Any]:
    # Like PyPI: a key for data the file does not have is left out.
    entry: dict[str, Any] = {
        "filename": file.filename,
        "url": file.listed_url or f"{base}/files/{quote(file.filename)}",
        "hashes": {} if file.unhashed else {"sha256": file.sha256},
        "requires-python": file.requires_python,
        "yanked": file.yanked,  # PEP 592 via PEP 691: false, true, or the reason
        "size": len(file.content),  # PEP 700
    }
    if file.metadata is not None:
        metadata = {"sha256": hashlib.sha256(file.metadata).hexdigest()}
        entry["core-metadata"] = metadata  # PEP 714 (JSON has only the new name, like PyPI)
    if file.provenance is not None:
        entry["provenance"] = f"{base}/provenance/{quote(file.filename)}"  # PEP 740
    if file.upload_time is not None:
        entry["upload-time"] = file.upload_time  # PEP 700
    return entry


def _project_html(
    name: str, files: list[FakeFile], base: str, api_version: str, serial: int, status: Status
) -> bytes:
    links = []
    if status is not None:  # PEP 792
        links.append(f'<meta name="pypi:project-status" content="{html.escape(status[0])}">')
        if status[1]:
            links.append(f'<meta name="pypi:project-status-reason" content="{html.escape(status[1])}">')
    for file in files:
        href = file.listed_url or f"{base}/files/{quote(file.filename)}"
        href += "" if file.unhashed else f"#sha256={file.sha256}"
        attributes = [f'href="{html.escape(href)}"']
        if file.requires_python is not None:
            attributes.append(f'data-requires-python="{html.escape(file.requires_python)}"')  # PEP 503
        if file.yanked is not False:
            reason = "" if file.yanked is True else file.yanked
            attributes.append(f'data-yanked="{html.escape(reason)}"')  # PEP 592
        if file.metadata is not None:
            digest = f"sha256={hashlib.sha256(file.metadata).hexdigest()}"
            attributes.append(f'data-core-metadata="{digest}"')  # PEP 714
            attributes.append(f'data-dist-info-metadata="{digest}"')  # PEP 658
        if file.provenance is not None:
            url = f"{base}/provenance/{quote(file.filename)}"
            attributes.append(f'data-provenance="{html.escape(url)}"')  # PEP 740
        links.append(f"<a {' '.join(attributes)}>{html.escape(file.filename)}</a><br />")
    return _html_document(
        f"Links for {name}", [f"<h1>Links for {html.escape(name)}</h1>", *links], api_version, serial
    )


def _status_response(status: int) -> web.Response:
    if status < 200 or status in (204, 304):
        return web.Response(status=status)
    return web.Response(status=status, text=f"fake upstream: status {status} by request of the test")


async def _file(request: web.Request) -> web.StreamResponse:
    index = request.app[INDEX_KEY]
    filename = request.match_info["filename"]
    found = index.find(filename)
    if found is not None:
        index.file_requests[filename] += 1
        return await _stream(request, filename, found[1].content)
    dist = filename.removesuffix(".metadata")
    found = index.find(dist) if dist != filename else None
    if found is not None and found[1].metadata is not None:
        index.metadata_requests[dist] += 1
        return await _stream(request, filename, found[1].metadata)
    index.file_requests[filename] += 1
    raise web.HTTPNotFound(text=f"no file {filename!r} on the fake index")


async def _provenance(request: web.Request) -> web.StreamResponse:
    index = request.app[INDEX_KEY]
    filename = request.match_info["filename"]
    index.provenance_requests[filename] += 1
    found = index.find(filename)
    if found is None or found[1].provenance is None:
        raise web.HTTPNotFound(text=f"no provenance for {filename!r} on the fake index")
    return web.Response(body=found[1].provenance, content_type="application/json")


async def _stream(request: web.Request, name: str, content: bytes) -> web.StreamResponse:
    """Send `content` in chunks, honouring the delay, corruption and truncation knobs for `name`."""
    index = request.app[INDEX_KEY]
    if name in index.corrupt_files:
        content = content.translate(_INVERT)  # same length, every byte different: any hash check fails
    limit = index.truncate_files.get(name)
    response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    response.content_length = len(content)  # announced in full even when truncating
    await response.prepare(request)
    if request.method == "HEAD":
        return response
    to_send = content if limit is None else content[:limit]
    chunk = max(index.file_chunk, 1)
    for start in range(0, len(to_send), chunk):
        delay = index.slow_files.get(name, index.file_delay)
        if delay:
            await asyncio.sleep(delay)
        await response.write(to_send[start : start + chunk])
    if limit is not None and limit < len(content) and request.transport is not None:
        # Drop the connection mid-body: the client sees fewer bytes than Content-Length announced.
        request.transport.close()
        return response
    await response.write_eof()
    return response
