"""The aiohttp application: routes, the error middleware, the access log, and start-up/clean-up."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from proxy.clock import Clock, SystemClock
from proxy.errors import WheelfarmError
from proxy.files import FileStore
from proxy.pages import PageCache
from proxy.rootlist import RootList
from proxy.services import CACHE_OUTCOME, REQUEST_ID, SERVICES, Services
from proxy.settings import Settings
from proxy.store import PageStore
from proxy.upstream import HttpUpstream, Upstream, make_session
from proxy.web_files import file
from proxy.web_pages import project_page, root_page

log = structlog.get_logger("wheelfarm")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def errors_and_context(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Bind the request id for every log line, and turn domain errors into plain-text HTTP answers."""
    request_id = request.headers.get("X-Request-ID", "")[:64] or uuid.uuid4().hex[:16]
    request[REQUEST_ID] = request_id
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(request_id=request_id)
    try:
        response = await handler(request)
    except WheelfarmError as exc:
        outcome = getattr(exc, "outcome", None)
        if outcome is not None:
            request[CACHE_OUTCOME] = outcome.value
        response = web.Response(status=exc.status, text=exc.message + "\n")
    except web.HTTPException as exc:
        exc.headers["X-Request-ID"] = request_id
        raise
    except ConnectionError:
        raise  # the client went away: nothing to answer
    except Exception:
        log.exception("unhandled_error", path=request.path)
        response = web.Response(
            status=500, text=f"internal error (request {request_id}); see the proxy log\n"
        )
    if not response.prepared:
        response.headers["X-Request-ID"] = request_id
    return response


class AccessLog(AbstractAccessLogger):
    """One structured line per request, written after the body is sent (so the byte count is real)."""

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        log.info(
            "request",
            request_id=request.get(REQUEST_ID),
            method=request.method,
            path=request.path_qs,
            status=response.status,
            bytes=_bytes_sent(response),
            duration_ms=round(time * 1000, 2),
            cache=request.get(CACHE_OUTCOME),
            user_agent=request.headers.get("User-Agent", "")[:120],
        )

    @property
    def enabled(self) -> bool:
        return True


def _bytes_sent(response: web.StreamResponse) -> int:
    # sendfile bypasses the payload writer's counter, so a FileResponse reports its Content-Length.
    if isinstance(response, web.FileResponse) and response.content_length is not None:
        return response.content_length
    return response.body_length


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "time": time.time()})


def create_app(
    settings: Settings, *, upstream: Upstream | None = None, clock: Clock | None = None
) -> web.Application:
    """The proxy. ``upstream`` defaults to HTTP against ``settings.upstream_url``; tests inject the clock."""
    app = web.Application(middlewares=[errors_and_context], client_max_size=1 << 20)
    the_clock = clock if clock is not None else SystemClock()

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        session = None
        source = upstream
        if source is None:
            session = make_session(settings)
            # A page fetch gets a total deadline too: sock_read alone lets a trickling upstream hold a client.
            source = HttpUpstream(
                session, settings.upstream_simple_url, page_timeout=settings.upstream_read_timeout
            )
        cache_dir = settings.cache_dir
        store = PageStore(cache_dir / "pages")
        files = FileStore(cache_dir / "files", source)
        app[SERVICES] = Services(
            settings=settings,
            pages=PageCache(source, store, the_clock, settings),
            root=RootList(source, store, cache_dir / "root", the_clock, settings),
            files=files,
        )
        log.info("proxy_ready", upstream=settings.upstream_simple_url, cache_dir=str(cache_dir))
        yield
        await files.close()
        store.close()
        if session is not None:
            await session.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/simple/", root_page)
    app.router.add_get("/simple/{project}/", project_page)
    app.router.add_get("/simple/{project}", project_page)
    app.router.add_get("/files/{project}/{key}/{filename}", file)
    return app


def run(settings: Settings) -> None:
    web.run_app(
        create_app(settings),
        host=settings.host,
        port=settings.port,
        access_log_class=AccessLog,
        print=None,
        handler_cancellation=False,
    )
