"""Pure parsers: upstream bytes -> model. PEP 691 JSON is preferred; PEP 503 HTML is the fallback."""

from __future__ import annotations

from collections.abc import Mapping
from html.parser import HTMLParser
from typing import Any
from urllib.parse import urldefrag, urljoin

import orjson

from proxy.index.model import DistFile, ProjectPage, ProjectStatus
from proxy.index.names import NormalizedName


class UpstreamPageError(ValueError):
    """Upstream sent a page we cannot read; the message names what is wrong."""


def parse_project_json(body: bytes, page_url: str, name: NormalizedName) -> ProjectPage:
    """Parse a PEP 691 JSON project page. Relative URLs are resolved against ``page_url``."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamPageError(f"upstream page for {name!r} is not valid JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("files"), list):
        raise UpstreamPageError(f"upstream page for {name!r} has no 'files' list")
    meta = data["meta"] if isinstance(data.get("meta"), dict) else {}
    files = tuple(_json_file(entry, page_url, name) for entry in data["files"])
    versions = data.get("versions")
    raw_status = data.get("project-status")  # PEP 792: {"status": ..., "reason": ...}
    status = (
        ProjectStatus.parse(raw_status.get("status"), raw_status.get("reason"))
        if isinstance(raw_status, dict)
        else None
    )
    return ProjectPage(
        name=name,
        files=files,
        versions=tuple(str(v) for v in versions) if isinstance(versions, list) else None,
        last_serial=_int_or_none(meta.get("_last-serial")),
        status=status,
    )


def _json_file(entry: Any, page_url: str, name: str) -> DistFile:
    if not isinstance(entry, dict) or not isinstance(entry.get("filename"), str):
        raise UpstreamPageError(f"upstream page for {name!r} has a file entry without a filename")
    if not isinstance(entry.get("url"), str):
        raise UpstreamPageError(f"upstream file {entry['filename']!r} has no url")
    hashes = entry.get("hashes")
    # PEP 714: "core-metadata" is the name; "dist-info-metadata" is what older servers send.
    metadata = entry.get("core-metadata", entry.get("dist-info-metadata", False))
    yanked = entry.get("yanked", False)
    provenance = entry.get("provenance")
    return DistFile(
        filename=entry["filename"],
        url=urljoin(page_url, entry["url"]),
        hashes=_hash_map(hashes),
        requires_python=_str_or_none(entry.get("requires-python")),
        yanked=yanked if isinstance(yanked, str) else bool(yanked),
        core_metadata=_hash_map(metadata) if isinstance(metadata, Mapping) else bool(metadata),
        size=_int_or_none(entry.get("size")),
        upload_time=_str_or_none(entry.get("upload-time")),
        provenance=urljoin(page_url, provenance) if isinstance(provenance, str) else None,
    )


def parse_project_html(body: bytes, page_url: str, name: NormalizedName, serial: int | None) -> ProjectPage:
    """Parse a PEP 503 HTML project page (with PEP 592/658/714/740 data attributes)."""
    parser = _AnchorParser()
    try:
        parser.feed(body.decode("utf-8", errors="replace"))
        parser.close()
    except Exception as exc:  # html.parser only raises on internal assertion failures
        raise UpstreamPageError(f"upstream HTML page for {name!r} cannot be parsed: {exc}") from None
    files = tuple(_html_file(attrs, page_url) for attrs in parser.anchors if attrs.get("href"))
    status = ProjectStatus.parse(
        parser.meta.get("pypi:project-status"), parser.meta.get("pypi:project-status-reason")
    )
    return ProjectPage(name=name, files=files, versions=None, last_serial=serial, status=status)


def _html_file(attrs: Mapping[str, str | None], page_url: str) -> DistFile:
    url, fragment = urldefrag(urljoin(page_url, attrs["href"] or ""))
    hashes = _fragment_hashes(fragment)
    filename = url.rsplit("/", 1)[-1]
    yanked_attr = attrs.get("data-yanked", _ABSENT)
    yanked: bool | str = False if yanked_attr is _ABSENT else (yanked_attr or True)
    metadata_attr = attrs.get("data-core-metadata", attrs.get("data-dist-info-metadata", _ABSENT))
    core_metadata: bool | Mapping[str, str]
    if metadata_attr is _ABSENT:
        core_metadata = False
    elif metadata_attr and "=" in metadata_attr:
        core_metadata = _fragment_hashes(metadata_attr) or True
    else:
        core_metadata = True
    provenance = attrs.get("data-provenance")
    return DistFile(
        filename=filename,
        url=url,
        hashes=hashes,
        requires_python=attrs.get("data-requires-python") or None,
        yanked=yanked,
        core_metadata=core_metadata,
        provenance=urljoin(page_url, provenance) if provenance else None,
    )


_ABSENT = "\0absent"


class _AnchorParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.anchors: list[dict[str, str | None]] = []
        self.meta: dict[str, str] = {}  # PEP 792's <meta name="pypi:project-status" content="...">

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "meta":
            found = dict(attrs)
            if found.get("name") and found.get("content") is not None:
                self.meta.setdefault(str(found["name"]), str(found["content"]))
        if tag == "a":
            # A bare attribute (data-yanked with no value) arrives as None: it still means "present".
            self.anchors.append({key: (value if value is not None else "") for key, value in attrs})


def _fragment_hashes(fragment: str) -> dict[str, str]:
    algorithm, sep, digest = fragment.partition("=")
    if not sep or not algorithm or not digest:
        return {}
    return {algorithm.lower(): digest.lower()}


def _hash_map(value: Any) -> dict[str, str]:
    if not isinstance(value, Mapping):
        return {}
    return {str(k).lower(): str(v).lower() for k, v in value.items() if isinstance(v, str)}


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None


def _int_or_none(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return None
