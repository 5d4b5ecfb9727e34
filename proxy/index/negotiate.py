"""Response format negotiation for the simple API (PEP 691 "Version + Format Selection").

Pure and total: any Accept header, however strange, yields a format or None (406); nothing here raises.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from proxy.index.model import PageFormat

# PEP 691: the "latest" aliases mean the newest version this server speaks, which is v1.
_MEDIA_TYPES: dict[str, PageFormat] = {
    "application/vnd.pypi.simple.v1+json": PageFormat.JSON_V1,
    "application/vnd.pypi.simple.latest+json": PageFormat.JSON_V1,
    "application/vnd.pypi.simple.v1+html": PageFormat.HTML_V1,
    "application/vnd.pypi.simple.latest+html": PageFormat.HTML_V1,
    "text/html": PageFormat.LEGACY_HTML,
}
# ?format= takes the same media types (as PyPI does); a few short spellings are a convenience for humans.
_FORMAT_PARAM: dict[str, PageFormat] = {
    **_MEDIA_TYPES,
    "json": PageFormat.JSON_V1,
    "html": PageFormat.HTML_V1,
}
# With equal q, prefer what the most capable clients want, as PyPI does: JSON, then v1 HTML, then legacy HTML.
_PREFERENCE = (PageFormat.JSON_V1, PageFormat.HTML_V1, PageFormat.LEGACY_HTML)
DEFAULT_FORMAT = PageFormat.LEGACY_HTML  # PEP 691: no Accept header means text/html
MAX_ACCEPT_LENGTH = 4096
MAX_ACCEPT_ITEMS = 64

SUPPORTED_MEDIA_TYPES = tuple(_MEDIA_TYPES)


@dataclass(frozen=True, slots=True)
class _Range:
    media_type: str
    quality: float


@functools.lru_cache(maxsize=1024)  # a handful of distinct Accept headers arrive over and over
def choose_format(accept: str | None, format_param: str | None = None) -> PageFormat | None:
    """The format to answer with, or None when nothing acceptable is on offer (HTTP 406)."""
    if format_param:
        return _FORMAT_PARAM.get(format_param.strip().lower())
    if accept is None or not accept.strip():
        return DEFAULT_FORMAT
    best: PageFormat | None = None
    best_quality = 0.0
    for media_range in _parse_accept(accept[:MAX_ACCEPT_LENGTH]):
        for fmt in _matching_formats(media_range.media_type):
            better_quality = media_range.quality > best_quality
            same_quality_preferred = (
                media_range.quality == best_quality
                and best is not None
                and _PREFERENCE.index(fmt) < _PREFERENCE.index(best)
            )
            if media_range.quality > 0 and (better_quality or same_quality_preferred):
                best, best_quality = fmt, media_range.quality
    return best


def _matching_formats(media_type: str) -> list[PageFormat]:
    if media_type in _MEDIA_TYPES:
        return [_MEDIA_TYPES[media_type]]
    if media_type in ("*/*", "text/*"):
        # RFC 9110 section 12.5.1: a wildcard leaves the choice to us. Like PyPI, a client that names no
        # simple-API type (curl, a browser) gets legacy HTML, which every client understands.
        return [PageFormat.LEGACY_HTML]
    if media_type == "application/*":
        return [PageFormat.JSON_V1]
    return []


def _parse_accept(header: str) -> list[_Range]:
    ranges: list[_Range] = []
    for item in header.split(",")[:MAX_ACCEPT_ITEMS]:
        media_type, *params = item.split(";")
        media_type = media_type.strip().lower()
        if "/" not in media_type:
            continue
        ranges.append(_Range(media_type, _quality(params)))
    return ranges


def _quality(params: list[str]) -> float:
    for param in params:
        key, _, value = param.partition("=")
        if key.strip().lower() == "q":
            try:
                quality = float(value.strip())
            except ValueError:
                return 0.0  # a malformed weight accepts nothing rather than everything
            # RFC 9110 section 12.4.2: qvalues lie in 0..1; NaN compares false and is treated as 0.
            return min(max(quality, 0.0), 1.0) if quality == quality else 0.0
    return 1.0
