"""File descriptors: the soft limit raised to the hard one at start, the connection budget that fits under
it, and recurring failures (descriptors exhausted, the same unexpected error again and again) logged as one
line per interval with a count, never one line per occurrence.

At a 1,024-descriptor limit (systemd's default soft limit), 1,347 slow connections once made every request
fail for 30 s while asyncio's accept loop logged "socket.accept() out of system resource" with a traceback
at every retry: 64 MB of log. asyncio itself recovers (it stops accepting for a second and tries again), so
all that is needed is a budget under the limit and a quiet log.
"""

from __future__ import annotations

import asyncio
import errno
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import structlog

log = structlog.get_logger("wheelfarm")

# accept(2) and open(2) fail with these when the process (EMFILE) or the system (ENFILE) has no descriptor
# left; accept also with ENOBUFS/ENOMEM when socket buffers run out (asyncio treats all four alike).
OUT_OF_DESCRIPTORS = frozenset({errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM})
# Descriptors kept back from client connections: the page index (SQLite), cached files being opened,
# upstream connections and downloads, the builder's pipes, logs.
FD_RESERVE = 128
FDS_PER_CONNECTION = 2  # the socket, and the file a cached wheel is sent from
MIN_CONNECTIONS = 8


@dataclass(frozen=True, slots=True)
class FdLimit:
    soft: int
    hard: int
    raised_from: int | None  # the soft limit before we raised it, if we did


def raise_fd_limit() -> FdLimit:
    """Raise RLIMIT_NOFILE's soft limit to its hard limit (any process may, setrlimit(2)).

    systemd starts services with a soft limit of 1,024 and a hard one of 524,288 so that programs still
    using select(2) do not break; asyncio uses epoll, so the proxy can take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard if hard != resource.RLIM_INFINITY else 1 << 20
    if soft == resource.RLIM_INFINITY or soft >= target:
        return FdLimit(soft, hard, None)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):  # a hard limit the kernel will not grant (macOS: above OPEN_MAX)
        return FdLimit(soft, hard, None)
    return FdLimit(target, hard, soft)


def connection_budget(configured: int, soft_limit: int) -> int:
    """The most client connections the descriptor limit can carry, at most ``configured``."""
    fits = (soft_limit - FD_RESERVE) // FDS_PER_CONNECTION
    return min(configured, max(MIN_CONNECTIONS, fits))


class Throttled:
    """A recurring problem logged at most once per ``interval`` seconds for each key, with the number of
    occurrences since the last line (so the count is exact however quiet the log)."""

    MAX_KEYS = 256  # keys are exception types and places: bounded, but never trust that blindly

    def __init__(
        self,
        event: str,
        interval: float = 10.0,
        *,
        level: str = "warning",
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._event = event
        self._level = level
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self.total = 0

    def hit(self, key: str = "", *, exc_info: BaseException | None = None, **fields: Any) -> bool:
        """Count one occurrence; log it if the key's interval has passed. True when a line was written."""
        self.total += 1
        self._counts[key] = self._counts.get(key, 0) + 1
        now = self._clock()
        last = self._last.get(key)
        if last is not None and now - last < self._interval:
            return False
        if last is None and len(self._last) >= self.MAX_KEYS:
            self._last.clear()
            self._counts = {key: self._counts[key]}
        self._last[key] = now
        occurrences = self._counts.pop(key)
        emit = log.error if self._level == "error" else log.warning
        emit(self._event, occurrences=occurrences, interval_s=self._interval, exc_info=exc_info, **fields)
        return True


# One per process: every listener, handler and the event loop report descriptor exhaustion here.
OUT_OF_FILES = Throttled("out_of_file_descriptors")
LOOP_ERRORS = Throttled("event_loop_error", interval=60.0)


def is_out_of_descriptors(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in OUT_OF_DESCRIPTORS


def quiet_loop_errors(loop: asyncio.AbstractEventLoop, out_of_descriptors: Callable[[], int]) -> None:
    """asyncio reports a failed accept(2), and errors nobody awaited, through the loop's exception handler,
    which logs a traceback each time: at one retry a second per listener, and more for callbacks.

    When accept fails for want of descriptors, ``out_of_descriptors`` frees some (closes idle connections;
    it returns how many) before asyncio tries again, a second later."""

    def handle(_: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        exc = context.get("exception")
        message = str(context.get("message", ""))
        if is_out_of_descriptors(exc):
            assert isinstance(exc, OSError)
            closed = out_of_descriptors()
            OUT_OF_FILES.hit("accept", where=message, error=exc.strerror, idle_connections_closed=closed)
            return
        if isinstance(exc, ValueError) and "_start_serving" in message:
            # After an EMFILE asyncio calls _start_serving again a second later, even if the listener was
            # closed meanwhile (we are stopping): "Invalid file descriptor: -1", harmless (the same quirk
            # as the endless lines of kyuupichan/electrumx#158).
            return
        key = f"{type(exc).__name__}: {message}"[:200]
        LOOP_ERRORS.hit(key, message=message, exc_info=exc if isinstance(exc, BaseException) else None)

    loop.set_exception_handler(handle)
