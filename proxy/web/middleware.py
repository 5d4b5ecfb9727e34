"""The one exception boundary of the request handlers: domain errors become plain-text answers, nothing
else escapes as a traceback per request, and every request gets its id and route for the access log."""

from __future__ import annotations

import itertools
import os
import re
from collections.abc import Awaitable, Callable

import structlog
from aiohttp import web

from proxy.errors import WheelfarmError
from proxy.pages.cache import ProjectNotFound
from proxy.web.resources import OUT_OF_FILES, Throttled, is_out_of_descriptors
from proxy.web.security import ERROR_HEADERS, error_response
from proxy.web.services import CACHE_OUTCOME, REQUEST_ID, ROUTE, RequestOutcome

log = structlog.get_logger("wheelfarm")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
# Request ids: this process's random prefix and a counter (cheaper than a uuid4 per request).
_ID_PREFIX = os.urandom(4).hex()
_REQUEST_NUMBERS = itertools.count(1)
# A client's own X-Request-ID is kept when it looks like an id (UUIDs, trace ids): it is echoed in a header
# and in 500 bodies, so it must carry no markup.
_CLIENT_ID = re.compile(r"[A-Za-z0-9._:+=/-]{1,64}")
# A bug that fails every request must not log a traceback for each: the first, then a count per minute.
UNHANDLED = Throttled("unhandled_error", interval=60.0, level="error")


def request_id_of(request: web.Request) -> str:
    given = request.headers.get("X-Request-ID", "")
    if given and _CLIENT_ID.fullmatch(given):
        return given
    return f"{_ID_PREFIX}-{next(_REQUEST_NUMBERS):x}"


@web.middleware
async def errors_and_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind the request id for every log line, and turn domain errors into plain-text HTTP answers."""
    request_id = request[REQUEST_ID] = request_id_of(request)
    resource = request.match_info.route.resource
    request[ROUTE] = resource.canonical if resource is not None else "unmatched"
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
    except WheelfarmError as exc:
        if isinstance(exc, ProjectNotFound):  # a remembered 404 is a cache hit too
            request[CACHE_OUTCOME] = RequestOutcome.of_cache(exc.outcome)
        response = error_response(exc.status, exc.message, reason=exc.reason)
    except web.HTTPException as exc:
        exc.headers["X-Request-ID"] = request_id
        exc.headers.update(ERROR_HEADERS)
        raise
    except ConnectionError:
        raise  # the client went away: nothing to answer
    except OSError as exc:
        if not is_out_of_descriptors(exc):
            response = _internal_error(request, request_id, exc)
        else:
            # Descriptors ran out (a burst of connections, a leak elsewhere): the request may well work in a
            # moment, so say so (RFC 9110 section 15.6.4), and log one line per interval, not one per request.
            OUT_OF_FILES.hit("request", where=request[ROUTE], error=exc.strerror)
            response = error_response(503, "the proxy is out of file descriptors; try again shortly")
            response.headers["Retry-After"] = "1"
    except Exception as exc:
        response = _internal_error(request, request_id, exc)
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    return response


def _internal_error(request: web.Request, request_id: str, exc: Exception) -> web.Response:
    UNHANDLED.hit(f"{type(exc).__name__} {request[ROUTE]}", exc_info=exc, path=request.path)
    return error_response(500, f"internal error (request {request_id}); see the proxy log")
