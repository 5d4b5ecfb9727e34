"""Many HTTP/1.1 GETs at once from one asyncio process, each timing its first and last body byte.

The cold-file section asks for one uncached file with 50 clients at once and reports when each got its
first byte. Threads of one Python process cannot time that: each waits for the GIL behind the others (a
5 ms switch interval, 50 threads deep), so their clocks measure the client. Fifty processes on a 2-core
machine starve the server instead. One event loop with a ``BufferedProtocol`` per connection reads into a
preallocated buffer (no allocation per chunk) and takes the time as soon as the loop sees the bytes.
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from urllib.parse import urljoin, urlsplit

BUFFER = 1 << 20


@dataclass
class Answer:
    """What one connection got: status, Location, body size, and the body's first and last byte times."""

    status: int = 0
    location: str = ""
    size: int = 0
    first_byte: float = float("nan")
    last_byte: float = float("nan")
    error: str = ""


class _Reader(asyncio.BufferedProtocol):
    def __init__(self, done: asyncio.Future[Answer]) -> None:
        self.done = done
        self.answer = Answer()
        self.buffer = bytearray(BUFFER)
        self.head = bytearray()
        self.length: int | None = None
        self.in_body = False

    def get_buffer(self, sizehint: int) -> memoryview:
        return memoryview(self.buffer)

    def buffer_updated(self, nbytes: int) -> None:
        now = time.monotonic()
        if not self.in_body:
            self.head += self.buffer[:nbytes]
            end = self.head.find(b"\r\n\r\n")
            if end < 0:
                return
            self._parse_head(bytes(self.head[:end]))
            self.in_body = True
            body = len(self.head) - end - 4
        else:
            body = nbytes
        if body:
            if self.answer.size == 0:
                self.answer.first_byte = now
            self.answer.size += body
            self.answer.last_byte = now
        if self.length is not None and self.answer.size >= self.length:
            self._finish()

    def _parse_head(self, head: bytes) -> None:
        lines = head.decode("latin-1").split("\r\n")
        self.answer.status = int(lines[0].split()[1])
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                self.length = int(value.strip())
            elif name.strip().lower() == "location":
                self.answer.location = value.strip()
            elif name.strip().lower() == "transfer-encoding" and "chunked" in value.lower():
                # Not decoded here: the size would count the framing. Say so instead of a silent mismatch.
                self.answer.error = "chunked answer: this client times Content-Length bodies only"

    def _finish(self) -> None:
        if not self.done.done():
            self.done.set_result(self.answer)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.answer.error and (self.length is None or self.answer.size < self.length):
            reason = f": {exc}" if exc else ""
            self.answer.error = f"connection closed after {self.answer.size} bytes{reason}"
        self._finish()


async def get(url: str) -> tuple[Answer, float, int]:
    """GET ``url`` following up to 5 redirects: the last answer, when it was asked for, and the redirects."""
    requested = time.monotonic()
    loop = asyncio.get_running_loop()
    for redirects in range(6):
        parts = urlsplit(url)
        if parts.scheme != "http":
            return Answer(error=f"not an http URL: {url}"), requested, redirects
        done: asyncio.Future[Answer] = loop.create_future()
        try:
            transport, _ = await loop.create_connection(
                functools.partial(_Reader, done), parts.hostname, parts.port or 80
            )
        except OSError as exc:
            return Answer(error=f"{type(exc).__name__}: {exc}"), requested, redirects
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        request = f"GET {target} HTTP/1.1\r\nHost: {parts.netloc}\r\nConnection: close\r\n\r\n"
        transport.write(request.encode())
        try:
            answer = await done
        finally:
            transport.close()
        if answer.status in (301, 302, 303, 307, 308) and answer.location:
            url = urljoin(url, answer.location)
            continue
        return answer, requested, redirects
    return Answer(error="too many redirects"), requested, 5


async def _timed(url: str, seconds: float) -> tuple[Answer, float, int]:
    requested = time.monotonic()
    try:
        async with asyncio.timeout(seconds):
            return await get(url)
    except TimeoutError:
        return Answer(error=f"no complete answer within {seconds} s"), requested, 0


async def _many(url: str, clients: int, seconds: float) -> list[tuple[Answer, float, int]]:
    return await asyncio.gather(*(_timed(url, seconds) for _ in range(clients)))


def many(url: str, clients: int, seconds: float = 300.0) -> list[tuple[Answer, float, int]]:
    """``clients`` GETs of ``url`` started together; each answer with its request time and redirects."""
    return asyncio.run(_many(url, clients, seconds))
