"""Pure renderers: model -> response body. One dict shape feeds JSON; HTML is built from the same model.

Every value placed in HTML goes through ``html.escape`` (attribute and text context alike).
"""

from __future__ import annotations

import gzip
import hashlib
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from html import escape
from typing import Any

import orjson

from proxy.index.model import JSON_API_VERSION, DistFile, PageFormat, ProjectPage
from proxy.index.names import InvalidProjectName, normalize


@dataclass(frozen=True, slots=True)
class Rendered:
    body: bytes
    etag: str
    gzipped: bytes  # the same body gzip-compressed once: pip and uv send Accept-Encoding: gzip

    @property
    def gzip_etag(self) -> str:
        # RFC 9110 section 8.8.3: another content coding is another representation, with its own validator.
        return self.etag[:-1] + '-gzip"'


def render_project(page: ProjectPage, fmt: PageFormat) -> Rendered:
    body = render_project_json(page) if fmt.is_json else render_project_html(page)
    # mtime=0: the same page always compresses to the same bytes.
    gzipped = gzip.compress(body, compresslevel=6, mtime=0)
    return Rendered(body=body, etag=strong_etag(body), gzipped=gzipped)


def strong_etag(body: bytes) -> str:
    """RFC 9110 section 8.8.3: a strong validator, here derived from the exact bytes."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def project_json_dict(page: ProjectPage) -> dict[str, Any]:
    meta: dict[str, Any] = {"api-version": JSON_API_VERSION}
    if page.last_serial is not None:
        meta["_last-serial"] = page.last_serial
    result: dict[str, Any] = {
        "meta": meta,
        "name": page.name,
        "files": [_json_file(dist) for dist in page.files],
    }
    if page.versions is not None:
        result["versions"] = list(page.versions)
    if page.status is not None:  # PEP 792
        status: dict[str, str] = {"status": page.status.state.value}
        if page.status.reason:
            status["reason"] = page.status.reason
        result["project-status"] = status
    return result


def render_project_json(page: ProjectPage) -> bytes:
    return orjson.dumps(project_json_dict(page))


def _json_file(dist: DistFile) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "filename": dist.filename,
        "url": dist.url,
        "hashes": dict(sorted(dist.hashes.items())),
        "requires-python": dist.requires_python,
        "yanked": dist.yanked,
    }
    # Keys for data a file does not have are left out, as upstream leaves them out: pip 22.3 and 23.0
    # crash on "dist-info-metadata": false (a TypeError in Link.metadata_link).
    if dist.core_metadata:
        metadata: bool | dict[str, str] = (
            True if isinstance(dist.core_metadata, bool) else dict(sorted(dist.core_metadata.items()))
        )
        # PEP 714: only the new key in JSON. pip 22.3 to 23.1 crash (TypeError in Link.metadata_link) on a
        # "dist-info-metadata" object, the reason for the rename; HTML keeps both attribute names.
        entry["core-metadata"] = metadata
    if dist.size is not None:
        entry["size"] = dist.size
    if dist.upload_time is not None:
        entry["upload-time"] = dist.upload_time
    if dist.provenance is not None:
        entry["provenance"] = dist.provenance
    if dist.wheelfarm:
        entry["_wheelfarm"] = dict(sorted(dist.wheelfarm.items()))
    return entry


def render_project_html(page: ProjectPage) -> bytes:
    name = escape(page.name)
    lines = [
        "<!DOCTYPE html>",
        "<html>",
        "  <head>",
        f'    <meta name="pypi:repository-version" content="{JSON_API_VERSION}">',
        *_status_meta(page),
        f"    <title>Links for {name}</title>",
        "  </head>",
        "  <body>",
        f"    <h1>Links for {name}</h1>",
    ]
    lines.extend(f"    {_html_anchor(dist)}<br />" for dist in page.files)
    lines.extend(["  </body>", "</html>", ""])
    return "\n".join(lines).encode()


def _status_meta(page: ProjectPage) -> list[str]:
    """PEP 792 in HTML: the status and its reason as meta tags."""
    if page.status is None:
        return []
    lines = [f'    <meta name="pypi:project-status" content="{escape(page.status.state.value)}">']
    if page.status.reason:
        lines.append(f'    <meta name="pypi:project-status-reason" content="{escape(page.status.reason)}">')
    return lines


def _html_anchor(dist: DistFile) -> str:
    href = dist.url
    sha = dist.sha256
    if sha is not None:
        href += "#sha256=" + sha
    elif dist.hashes:
        algorithm, digest = sorted(dist.hashes.items())[0]
        href += f"#{algorithm}={digest}"
    attrs = [f'href="{escape(href)}"']
    if dist.requires_python:
        attrs.append(f'data-requires-python="{escape(dist.requires_python)}"')
    if dist.yanked is not False:
        # PEP 592: the attribute's presence means yanked; its value is the reason (may be empty).
        reason = dist.yanked if isinstance(dist.yanked, str) else ""
        attrs.append(f'data-yanked="{escape(reason)}"')
    if dist.core_metadata:
        value = "true"
        if not isinstance(dist.core_metadata, bool) and dist.core_metadata:
            algorithm, digest = sorted(dist.core_metadata.items())[0]
            value = f"{algorithm}={digest}"
        # PEP 714 again: both attribute names.
        attrs.append(f'data-core-metadata="{escape(value)}"')
        attrs.append(f'data-dist-info-metadata="{escape(value)}"')
    if dist.provenance:
        attrs.append(f'data-provenance="{escape(dist.provenance)}"')  # PEP 740
    for key, value in sorted(dist.wheelfarm.items()):
        attrs.append(f'data-wheelfarm-{escape(key)}="{escape(value)}"')
    return f"<a {' '.join(attrs)}>{escape(dist.filename)}</a>"


# -- the root project list: streamed, because upstream's is tens of megabytes --------------------------------


def render_root_json(names: Iterable[str], serial: int | None) -> Iterator[bytes]:
    meta: dict[str, Any] = {"api-version": JSON_API_VERSION}
    if serial is not None:
        meta["_last-serial"] = serial
    yield b'{"meta":' + orjson.dumps(meta) + b',"projects":['
    first = True
    for name in names:
        prefix = b"" if first else b","
        first = False
        yield prefix + b'{"name":' + orjson.dumps(name) + b"}"
    yield b"]}"


def render_root_html(names: Iterable[str]) -> Iterator[bytes]:
    yield (
        b"<!DOCTYPE html>\n<html>\n  <head>\n"
        b'    <meta name="pypi:repository-version" content="' + JSON_API_VERSION.encode() + b'">\n'
        b"    <title>Simple index</title>\n  </head>\n  <body>\n"
    )
    for name in names:
        escaped = escape(name)
        # Links are relative to /simple/, so the list works under any mount point.
        yield f'    <a href="{escape(_root_href(name))}">{escaped}</a>\n'.encode()
    yield b"  </body>\n</html>\n"


def _root_href(name: str) -> str:
    try:
        return normalize(name) + "/"
    except InvalidProjectName:
        return name + "/"
