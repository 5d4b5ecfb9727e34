"""Client connections: limits that keep slow and idle clients from holding the proxy's file descriptors, and
an answer (plus one access-log line) for every request aiohttp's parser refuses.

aiohttp's server closes a kept-alive connection after ``keepalive_timeout`` idle seconds, but it has no
header-read timeout (a client may send its headers a byte a minute, "slowloris") and no limit on open
connections, so enough slow clients use up the process's descriptors and every other request fails.
``EdgeRequestHandler`` is aiohttp's RequestHandler (the asyncio protocol of one connection) with:

- a head timer: from the connection's start, or from the first byte of a later request on it, the request
  line and headers must arrive within [server] header_timeout; a client that sent part of a request then
  gets 408 (RFC 9110 section 15.5.9: the server would rather close than wait), and the connection is closed;
- a shared connection count: at [server] max_connections the connection idle longest is closed to make room
  (a kept-alive one waiting for its next request, as nginx reuses them when it runs short; else the fresh
  one that connected longest ago and has not sent a whole request); when every connection has a request in
  progress the new one gets 503 without a byte read;
- its own answer to a request the parser refuses: a 400 that quotes none of the client's bytes, logged once
  in the access log with no traceback (aiohttp logs a traceback for each, and quotes the bytes back).

Two things here are aiohttp 3.14 internals: ``_request_count`` (request heads parsed on the connection,
counted by data_received) and handle_error being the answer to a parser error. tests/test_edge.py fails if
either changes.
"""

from __future__ import annotations

import asyncio
import http
import re
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, cast

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_request import BaseRequest
from yarl import URL

from proxy.web.accesslog import AccessLog
from proxy.web.middleware import UNHANDLED
from proxy.web.resources import Throttled
from proxy.web.security import error_response
from proxy.web.services import UNPARSED

# The kernel's queue of connections not yet accepted (capped by net.core.somaxconn). asyncio also accepts up
# to this many in one go, before any of them is counted or an idle one closed to make room: so no more than
# the connection budget, whose descriptors the budget keeps free.
MAX_BACKLOG = 1024
REFUSED_LINGER = 1.0  # seconds a refused connection stays half-closed so its client can read the 503
MAX_REFUSING = 64  # more refused connections than this at once are reset at once instead


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    header_timeout: float
    idle_timeout: float
    max_connections: int


def _canned(status: http.HTTPStatus, extra: str = "") -> bytes:
    """A whole response written straight to the transport, where there is no request to answer."""
    body = f"{status.value} {status.phrase}\n"
    head = (
        f"HTTP/1.1 {status.value} {status.phrase}\r\nContent-Type: text/plain; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\nX-Content-Type-Options: nosniff\r\n{extra}\r\n"
    )
    return (head + body).encode("ascii")


REQUEST_TIMEOUT = _canned(http.HTTPStatus.REQUEST_TIMEOUT)
BUSY = _canned(http.HTTPStatus.SERVICE_UNAVAILABLE, "Retry-After: 1\r\n")


class Connections:
    """What all connections of the process share: the count against the limit, the connections waiting for
    a request in the order they started waiting (the first is closed when a new one needs room), counters
    for /metrics and the access log."""

    def __init__(self, limits: ConnectionLimits, access: AccessLog) -> None:
        self.limits = limits
        self.access = access
        self.open = 0
        self.refusing = 0
        self.closed = {"header_timeout": 0, "evicted": 0, "refused": 0}
        # Connections with no request in progress, oldest first: kept alive after answering one, and fresh
        # ones that have not sent a whole request yet.
        self._kept: OrderedDict[EdgeRequestHandler, None] = OrderedDict()
        self._fresh: OrderedDict[EdgeRequestHandler, None] = OrderedDict()
        self._full = Throttled("connection_limit_reached")

    def admit(self) -> bool:
        """Room for one more connection, closing the longest-idle one if need be; False: none to close."""
        if self.open >= self.limits.max_connections:
            victim = self._victim()
            if victim is None:
                self.closed["refused"] += 1
                self._full.hit("refused", open=self.open, action="new connections refused (503)")
                return False
            self.closed["evicted"] += 1
            self._full.hit("evicted", open=self.open, action="longest-idle connections closed")
            victim.close_idle()
        self.open += 1
        return True

    def _victim(self) -> EdgeRequestHandler | None:
        """A kept-alive connection waiting for its next request first (its client was served, and nginx
        reuses those first); else the fresh one that connected longest ago: a client that just connected
        has the time of ``max_connections`` arrivals to send its request before it could be chosen."""
        if self._kept:
            return self._kept.popitem(last=False)[0]
        if self._fresh:
            return self._fresh.popitem(last=False)[0]
        return None

    def shed(self) -> int:
        """Descriptors ran out: close the longest-waiting quarter of the idle connections (at least one),
        the cheapest thing to give up (nginx does the same when it runs short of connections)."""
        idle = len(self._kept) + len(self._fresh)
        count = min(idle, max(1, idle // 4))
        for _ in range(count):
            source: OrderedDict[EdgeRequestHandler, Any] = self._kept or self._fresh
            victim, _ = source.popitem(last=False)
            self.closed["evicted"] += 1
            victim.close_idle()
        return count

    def fresh(self, connection: EdgeRequestHandler) -> None:
        self._fresh[connection] = None

    def waiting(self, connection: EdgeRequestHandler) -> None:
        self._fresh.pop(connection, None)
        self._kept.pop(connection, None)
        self._kept[connection] = None

    def busy(self, connection: EdgeRequestHandler) -> None:
        self._fresh.pop(connection, None)
        self._kept.pop(connection, None)

    def release(self, connection: EdgeRequestHandler) -> None:
        self.busy(connection)
        self.open -= 1


class EdgeRequestHandler(web.RequestHandler):
    """One client connection: aiohttp's protocol plus the head timer, the shared count and quiet 400s."""

    def __init__(
        self, manager: web.Server, connections: Connections, *, loop: asyncio.AbstractEventLoop, **kwargs: Any
    ) -> None:
        # aiohttp's keep-alive timer is the idle timeout; it also runs from the connection's start.
        super().__init__(
            manager,
            loop=loop,
            keepalive_timeout=connections.limits.idle_timeout,
            access_log_class=AccessLog,
            **kwargs,
        )
        self._connections = connections
        self._edge_loop = loop
        self._admitted = False
        self._refused: asyncio.TimerHandle | None = None
        self._answered = 0  # requests answered on this connection (logged); _request_count: heads parsed
        self._head_timer: asyncio.TimerHandle | None = None
        self._head_started = 0.0
        self._head_bytes = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        if not self._connections.admit():
            self._refuse(cast(asyncio.Transport, transport))
            return
        self._admitted = True
        super().connection_made(transport)
        self._start_head()
        self._connections.fresh(self)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._refused is not None:
            self._refused.cancel()
            self._connections.refusing -= 1
            return
        self._release()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self.transport is None:
            return
        parsed = self._request_count
        if data and parsed == self._answered:  # bytes of a request head (nothing parsed is unanswered)
            if self._head_timer is None:
                self._start_head()  # the first byte of the next request on a kept-alive connection
            self._head_bytes = True
        super().data_received(data)
        if self._request_count != parsed:  # a head arrived whole: a request is in progress
            self._cancel_head()
            self._connections.busy(self)

    def log_access(self, request: BaseRequest, response: web.StreamResponse, time: float | None) -> None:
        self._answered += 1
        now = self._edge_loop.time()
        self._connections.access.log(request, response, now - time if time is not None else 0.0)
        if self._admitted and self.transport is not None and self._request_count == self._answered:
            self._connections.waiting(self)  # idle until the next request (aiohttp's keep-alive timer)

    def handle_error(
        self,
        request: BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        """The answer to a request the parser refused (``exc`` an HttpProcessingError), or to an exception
        that got past the error middleware. aiohttp's own logs a traceback and quotes the client's bytes."""
        if request.writer.output_size > 0:  # as aiohttp: headers are out, so the connection is broken
            raise ConnectionError("response already started, cannot send an error response")
        if isinstance(exc, HttpProcessingError):
            reason = _parse_error(exc)
            request[UNPARSED] = reason
            response = error_response(status, f"{status} Bad Request: cannot parse the request ({reason})")
        else:
            if exc is not None:
                UNHANDLED.hit(type(exc).__name__, exc_info=exc, status=status)
            response = error_response(status, f"{status} {_phrase(status)}")
        response.force_close()
        return response

    def close_idle(self) -> None:
        """Closed to make room for a new connection (it has no request in progress)."""
        self._release()
        self.force_close()

    def _refuse(self, transport: asyncio.Transport) -> None:
        """503 without reading (RFC 9110 section 15.6.4), then a half-close (FIN) so the client reads it
        before the reset that closing with its unread request causes."""
        connections = self._connections
        if connections.refusing >= MAX_REFUSING:
            transport.abort()
            return
        connections.refusing += 1
        transport.pause_reading()
        transport.write(BUSY)
        if transport.can_write_eof():
            transport.write_eof()
        self._refused = self._edge_loop.call_later(REFUSED_LINGER, transport.abort)

    def _start_head(self) -> None:
        self._head_started = self._edge_loop.time()
        self._head_bytes = False
        self._head_timer = self._edge_loop.call_later(
            self._connections.limits.header_timeout, self._head_timed_out
        )

    def _cancel_head(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        transport = self.transport
        if transport is None or self._request_count != self._answered:
            return
        self._connections.closed["header_timeout"] += 1
        if self._head_bytes:  # part of a request came: answer it, and log it like any request
            transport.write(REQUEST_TIMEOUT)
            elapsed = self._edge_loop.time() - self._head_started
            self._connections.access.log_timeout(408, len(REQUEST_TIMEOUT), elapsed)
        self._release()
        self.force_close()

    def _release(self) -> None:
        self._cancel_head()
        if self._admitted:
            self._admitted = False
            self._connections.release(self)


def _phrase(status: int) -> str:
    try:
        return http.HTTPStatus(status).phrase
    except ValueError:
        return "Error"


def _parse_error(exc: HttpProcessingError) -> str:
    """What the parser disliked, without the client's bytes that aiohttp's messages quote."""
    text = re.split(r"[:\n'\"(]", exc.message or "", maxsplit=1)[0]
    text = re.sub(r"[^A-Za-z0-9 ,.-]", "", text).strip()[:80]
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_RequestHandler = Callable[[BaseRequest], Awaitable[web.StreamResponse]]


def _expectations_checked(handler: _RequestHandler) -> _RequestHandler:
    """Answer an Expect other than 100-continue with 417 (RFC 9110 section 10.1.1) before routing.

    aiohttp's own answer (its default expect handler, which runs before any middleware) quotes the header
    back, and fails with a 500 and a traceback when the value is not UTF-8."""

    async def checked(request: BaseRequest) -> web.StreamResponse:
        expect = request.headers.get("Expect")
        if expect is not None and expect.lower() != "100-continue":
            return error_response(417, "417 Expectation Failed: only 'Expect: 100-continue' is understood")
        return await handler(request)

    checked.__dict__["expectations_checked"] = True
    return checked


class EdgeSite(web.BaseSite):
    """A TCP listener whose connections are EdgeRequestHandlers sharing one Connections."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, connections: Connections, *, shared: bool = False
    ) -> None:
        """``shared``: other processes listen on the same port (SO_REUSEPORT; the kernel spreads the
        connections among them)."""
        super().__init__(runner, backlog=min(MAX_BACKLOG, max(128, connections.limits.max_connections)))
        self._host = host
        self._port = port
        self._connections = connections
        self._shared = shared

    @property
    def name(self) -> str:
        return str(URL.build(scheme="http", host=self._host, port=self._port))

    async def start(self) -> None:
        await super().start()
        loop = asyncio.get_running_loop()
        server = self._runner.server
        assert server is not None  # the runner is set up
        if not getattr(server.request_handler, "expectations_checked", False):
            server.request_handler = _expectations_checked(server.request_handler)
        connections = self._connections

        def connection() -> EdgeRequestHandler:
            return EdgeRequestHandler(server, connections, loop=loop)

        self._server = await loop.create_server(
            connection,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=True,
            reuse_port=self._shared,
        )
