"""The access log: one JSON line and one metrics count per request, whatever became of it.

A request the handlers answered, one aiohttp's parser refused (route "malformed": no method or path can be
trusted, so none is logged), and a request whose headers never finished arriving (route "timeout", a 408
from proxy.web.edge) are each logged exactly once.
"""

from __future__ import annotations

import logging

import structlog
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.web_request import BaseRequest

from proxy.web.files import GrowingFileResponse
from proxy.web.metrics import Metrics
from proxy.web.services import CACHE_OUTCOME, REQUEST_ID, ROUTE, SERVICES, UNPARSED

log = structlog.get_logger("wheelfarm")

MALFORMED_ROUTE = "malformed"  # the parser refused it: a client's mistake (or an attack), answered 400
TIMEOUT_ROUTE = "timeout"  # the headers did not arrive within [server] header_timeout: 408


class AccessLog(AbstractAccessLogger):
    """One structured line per request, written after the body is sent (so the byte count is real).

    aiohttp makes one per connection with (logger, format); proxy.web.edge hands every connection the same
    metrics. Under a plain aiohttp runner (the tests' server threads) the metrics are found through the app.
    """

    def __init__(self, logger: logging.Logger, log_format: str) -> None:
        super().__init__(logger, log_format)
        # Decided once, when the server starts (after logging is configured): a warm page costs about
        # 150 microseconds, and building a request line nobody keeps would be a tenth of that.
        self._lines = bool(log.is_enabled_for(logging.INFO))
        self.metrics: Metrics | None = None

    def log(self, request: BaseRequest, response: web.StreamResponse, time: float) -> None:
        sent = _bytes_sent(response)
        # Never request.match_info here: aiohttp asserts it is set, and it is not for a request its parser
        # refused (that assertion once wrote a traceback per bad request, and no line, no count).
        unparsed = request.get(UNPARSED)
        route = request.get(ROUTE) or (MALFORMED_ROUTE if unparsed is not None else "unmatched")
        metrics = self.metrics or self._find_metrics(request)
        if metrics is not None:
            metrics.count_request(route, response.status, sent, _outcome(request), time)
        if not self._lines:
            return
        if unparsed is not None:
            self.log_refused(response.status, sent, time, unparsed)
            return
        log.info(
            "request",
            request_id=request.get(REQUEST_ID),
            method=request.method,
            path=request.path_qs,
            status=response.status,
            bytes=sent,
            duration_ms=round(time * 1000, 2),
            cache=_outcome(request),
            user_agent=request.headers.get("User-Agent", "")[:120],
        )

    def log_timeout(self, status: int, sent: int, time: float) -> None:
        """A request whose headers never arrived in full: counted and logged like any other."""
        if self.metrics is not None:
            self.metrics.count_request(TIMEOUT_ROUTE, status, sent, None, time)
        if self._lines:
            self.log_refused(status, sent, time, "the request headers did not arrive in time")

    def log_refused(self, status: int, sent: int, time: float, error: str) -> None:
        log.info(
            "request",
            request_id=None,
            method=None,
            path=None,
            status=status,
            bytes=sent,
            duration_ms=round(time * 1000, 2),
            cache=None,
            error=error,
        )

    def _find_metrics(self, request: BaseRequest) -> Metrics | None:
        if ROUTE not in request or not isinstance(request, web.Request):
            return None  # config_dict needs the route's apps
        services = request.config_dict.get(SERVICES)
        self.metrics = services.metrics if services is not None else None
        return self.metrics

    @property
    def enabled(self) -> bool:
        return True


def _bytes_sent(response: web.StreamResponse) -> int:
    # sendfile bypasses the payload writer's counter: a FileResponse reports its Content-Length, a growing
    # file's response what it counted. (type() first: a response is a mapping, so isinstance is an ABC check.)
    if type(response) is web.Response:
        return response.body_length
    if isinstance(response, GrowingFileResponse):
        return response.bytes_sent
    if isinstance(response, web.FileResponse) and response.content_length is not None:
        return response.content_length
    return response.body_length


def _outcome(request: BaseRequest) -> str | None:
    outcome = request.get(CACHE_OUTCOME)
    return outcome.value if outcome is not None else None
