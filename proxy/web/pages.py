"""Handlers for the simple API pages: ``/simple/`` and ``/simple/<project>/``."""

from __future__ import annotations

from aiohttp import web

from builder.tags import InvalidTarget, Target, locking_client, target_from_user_agent
from proxy.errors import BadRequest, NotAcceptable
from proxy.index.model import PageFormat
from proxy.index.names import InvalidProjectName, NormalizedName, normalize
from proxy.index.negotiate import SUPPORTED_MEDIA_TYPES, choose_format
from proxy.pages.cache import CacheOutcome
from proxy.web.services import CACHE_OUTCOME, SERVICES, RequestOutcome


def page_target(request: web.Request) -> tuple[Target | None, str]:
    """The target whose overlay the page carries, and the Vary header that says what decided it.

    ``/t/<target>/simple/`` names it; ``/plain/simple/`` has none (builders use it: no build links, so no
    build ever waits on another); ``/simple/`` reads pip's or uv's User-Agent (RFC 9110 section 12.5.5).
    """
    scope = request.match_info.get("scope")
    if scope is not None:
        try:
            return Target.parse(scope), "Accept"
        except InvalidTarget as exc:
            raise BadRequest(str(exc)) from None
    if request.path.startswith("/plain/"):
        return None, "Accept"
    if not request.app[SERVICES].settings.offers_builds:
        return None, "Accept"
    return target_from_user_agent(request.headers.get("User-Agent")), "Accept, User-Agent"


def negotiated_format(request: web.Request) -> PageFormat:
    # request.query parses the query string into a new MultiDict: most requests have none.
    fmt = choose_format(
        request.headers.get("Accept"), request.query.get("format") if request.query_string else None
    )
    if fmt is None:
        raise NotAcceptable(
            "none of the formats in the Accept header (or ?format=) is served here; "
            "ask for one of: " + ", ".join(SUPPORTED_MEDIA_TYPES)
        )
    return fmt


def project_name(raw: str) -> NormalizedName:
    try:
        return normalize(raw)
    except InvalidProjectName as exc:
        raise BadRequest(str(exc)) from None


async def root_page(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    fmt = negotiated_format(request)
    result = await services.root.current()
    request[CACHE_OUTCOME] = RequestOutcome.of_cache(result.outcome)
    headers = _cache_headers(result.outcome, result.stale_reason, services.settings.cache_root_ttl, "Accept")
    headers["Content-Type"] = fmt.content_type
    return web.FileResponse(result.path_for(fmt), chunk_size=1 << 18, headers=headers)


async def project_page(request: web.Request) -> web.StreamResponse:
    services = request.app[SERVICES]
    raw = request.match_info["project"]
    name = project_name(raw)
    if name != raw or not request.path.endswith("/"):
        # PEP 503: answer non-normalised names with a redirect to the normalised URL. The Location is relative
        # (RFC 9110 section 10.2.2 allows it) so it stays right behind a reverse proxy that adds a prefix.
        location = (f"../{name}/" if request.path.endswith("/") else f"{name}/") + _query(request)
        raise web.HTTPMovedPermanently(location=location)
    fmt = negotiated_format(request)
    target, vary = page_target(request)
    locking = locking_client(request.headers.get("User-Agent"))
    result, rendered = await services.overlay.page(name, fmt, target, locking=locking)
    request[CACHE_OUTCOME] = RequestOutcome.of_cache(result.outcome)
    compressed = _accepts_gzip(request)
    etag = rendered.gzip_etag if compressed else rendered.etag
    # One header dict, handed to the response whole: a warm page costs ~150 microseconds, and setting
    # headers one by one through the response's properties was a tenth of that.
    headers = _cache_headers(
        result.outcome, result.stale_reason, services.settings.cache_page_ttl, vary + ", Accept-Encoding"
    )
    headers["ETag"] = etag
    if result.page.last_serial is not None:
        headers["X-PyPI-Last-Serial"] = str(result.page.last_serial)
    if target is not None:
        headers["X-Wheelfarm-Target"] = target.id
    if etag in _if_none_match(request):
        return web.Response(status=304, headers=headers)
    headers["Content-Type"] = _CONTENT_TYPES[fmt]
    if compressed:
        headers["Content-Encoding"] = "gzip"
    return web.Response(body=rendered.gzipped if compressed else rendered.body, headers=headers)


# Legacy HTML names its charset (PEP 503 pages are UTF-8); the PEP 691 types define their own encoding.
_CONTENT_TYPES = {fmt: fmt.content_type for fmt in PageFormat} | {
    PageFormat.LEGACY_HTML: "text/html; charset=utf-8"
}


def _cache_headers(outcome: CacheOutcome, stale_reason: str | None, ttl: float, vary: str) -> dict[str, str]:
    if outcome is CacheOutcome.STALE:
        # Serving stale-if-error (RFC 5861): say so, and do not let downstream caches keep it.
        return {
            "Vary": vary,
            "X-Wheelfarm-Cache": outcome.value,
            "X-Wheelfarm-Stale-Reason": (stale_reason or "upstream unavailable")[:300],
            "Cache-Control": "max-age=0, must-revalidate",
        }
    return {"Vary": vary, "X-Wheelfarm-Cache": outcome.value, "Cache-Control": f"max-age={int(ttl)}, public"}


def _accepts_gzip(request: web.Request) -> bool:
    """RFC 9110 section 12.5.3, simply: gzip listed and not refused with q=0."""
    for coding in request.headers.get("Accept-Encoding", "").lower().split(","):
        name, _, params = coding.partition(";")
        if name.strip() in ("gzip", "x-gzip"):
            return params.replace(" ", "") not in ("q=0", "q=0.0", "q=0.00", "q=0.000")
    return False


def _if_none_match(request: web.Request) -> list[str]:
    header = request.headers.get("If-None-Match", "")
    return [tag.strip().removeprefix("W/") for tag in header.split(",") if tag.strip()]


def _query(request: web.Request) -> str:
    # The query as the client sent it: the decoded one would turn "%0d%0a" into a line break in Location.
    raw = request.rel_url.raw_query_string
    return "?" + raw if raw else ""
