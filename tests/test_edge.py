"""The real `wheelfarm serve` against hostile clients: slow and idle connections, more of them than the
process has file descriptors, descriptors running out, and requests its HTTP parser refuses.

Each test is bounded (seconds, not minutes): timeouts of 1 to 3 s, a few hundred sockets.
"""

from __future__ import annotations

import asyncio
import contextlib
import resource
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any, Final

import httpx
import pytest
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import free_port, wait_for
from rawhttp import LogTail, exchange, metric
from serve import wheelfarm_serve

HEADER_TIMEOUT: Final = 2.0
IDLE_TIMEOUT: Final = 3.0
FD_LIMIT: Final = 256  # the proxy's whole open-files limit in the slow-connection test
SLOW_CONNECTIONS: Final = 300  # more than FD_LIMIT: without a budget, accept(2) fails with EMFILE
PAGE_ACCEPT: Final = {"Accept": "application/vnd.pypi.simple.v1+json"}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreamServer]:
    index = FakeIndex()
    index.add_file("tinypure", FakeFile("tinypure-1.0-py3-none-any.whl", b"PK\x05\x06" + bytes(18)))
    with FakeUpstreamServer(index) as server:
        yield server


def serve_args(port: int, cache: Path, upstream: FakeUpstreamServer, *extra: str) -> list[str]:
    return [
        "--port", str(port), "--cache-dir", str(cache), "--upstream", upstream.simple_url,
        "--builder-enabled", "no", "--logging-format", "json",
        "--server-header-timeout", str(HEADER_TIMEOUT), "--server-idle-timeout", str(IDLE_TIMEOUT),
        *extra,
    ]  # fmt: skip


@pytest.fixture(autouse=True)
def enough_descriptors_here() -> None:
    """This test process opens a few hundred sockets itself."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < 4096 <= hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (4096, hard))


def timed_get(url: str, deadline: float = 2.0) -> float:
    started = time.monotonic()
    response = httpx.get(url, headers=PAGE_ACCEPT, timeout=deadline)
    assert response.status_code == 200, response.text
    return time.monotonic() - started


async def _slow_clients(port: int, count: int, *, wave: int = 30) -> tuple[list[float], int]:
    """``count`` connections, ``wave`` every 0.1 s: half send part of a request head and then a byte every
    0.3 s, half send nothing. Returns, for each, the seconds from its start until the server closed it, and
    how many were told 408."""
    timeouts = 0

    async def one(trickle: bool) -> float:
        nonlocal timeouts
        started = time.monotonic()
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            return time.monotonic() - started
        try:
            if trickle:
                writer.write(b"GET /healthz HTTP/1.1\r\nHost: slow\r\nX-Slow: ")
            while True:
                try:
                    data = await asyncio.wait_for(reader.read(1024), 0.3)
                except TimeoutError:
                    if trickle:
                        writer.write(b"x")
                    continue
                timeouts += data.startswith(b"HTTP/1.1 408 ")
                if not data:
                    return time.monotonic() - started
        except OSError:
            return time.monotonic() - started
        finally:
            writer.close()

    async with asyncio.timeout(HEADER_TIMEOUT + 20):
        tasks = []
        for i in range(count):
            tasks.append(asyncio.create_task(one(i % 2 == 0)))
            if i % wave == wave - 1:
                await asyncio.sleep(0.1)
        closed = await asyncio.gather(*tasks)
    return list(closed), timeouts


def test_slow_and_idle_clients_cannot_take_every_descriptor(
    upstream: FakeUpstreamServer, tmp_path: Path
) -> None:
    port = free_port()
    args = serve_args(port, tmp_path / "cache", upstream)
    # Started with a soft limit of half the hard one: the proxy raises it to the hard one.
    wrapper = ["prlimit", f"--nofile={FD_LIMIT // 2}:{FD_LIMIT}", "--"]
    with wheelfarm_serve(args, port, tmp_path / "server", wrapper=wrapper) as server:
        page = f"{server.url}/simple/tinypure/"
        timed_get(page)  # cached: what follows measures the proxy, not the upstream
        with _in_thread(lambda: _slow_clients(port, SLOW_CONNECTIONS)) as slow:
            # While 300 slow clients come and go, more than the proxy has descriptors for, others are
            # answered at once.
            waits = []
            for _ in range(20):
                waits.append(timed_get(page))
                time.sleep(0.1)
        closed, timeouts = slow.result()
        idle_for = _kept_alive_idle_seconds(port)
        health = httpx.get(server.url + "/healthz", timeout=5)
        closed_for = {
            reason: metric(server.url, "wheelfarm_connections_closed_total", reason=reason)
            for reason in ("evicted", "header_timeout", "refused")
        }
        max_fds = metric(server.url, "process_max_fds")
        lines = server.log_lines()

    assert health.status_code == 200
    assert max(waits) < 1.0, waits
    # Every slow connection was closed by the server, the last within the header timeout (and a margin).
    assert max(closed) < HEADER_TIMEOUT + 2, sorted(closed)[-5:]
    assert timeouts > 0  # those still sending their head when it ran out were told so (408)
    assert closed_for["evicted"] > 0, closed_for
    assert closed_for["header_timeout"] > 0, closed_for
    assert IDLE_TIMEOUT - 0.5 < idle_for < IDLE_TIMEOUT + 2
    assert max_fds == FD_LIMIT
    (limit,) = [line for line in lines if line["event"] == "fd_limit"]
    assert (limit["soft"], limit["hard"], limit["raised_from"]) == (FD_LIMIT, FD_LIMIT, FD_LIMIT // 2)
    (lowered,) = [line for line in lines if line["event"] == "max_connections_lowered"]
    assert lowered["max_connections"] < FD_LIMIT // 2
    # The log is not flooded: request lines (the 408s among them) and a few throttled warnings.
    others = [line for line in lines if line["event"] != "request"]
    assert len(others) < 15, others
    assert "Traceback" not in server.stderr()


def _kept_alive_idle_seconds(port: int) -> float:
    """How long the proxy keeps a connection open after answering its request, with nothing more sent."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: idle\r\n\r\n")
        answered_at = _read_response(sock)
        sock.settimeout(IDLE_TIMEOUT + 5)
        with contextlib.suppress(ConnectionResetError):
            assert sock.recv(1) == b""
        return time.monotonic() - answered_at


def test_out_of_descriptors_is_one_warning_and_the_proxy_recovers(
    upstream: FakeUpstreamServer, tmp_path: Path
) -> None:
    port = free_port()
    with wheelfarm_serve(serve_args(port, tmp_path / "cache", upstream), port, tmp_path / "server") as server:
        timed_get(server.url + "/simple/tinypure/")
        pid = server.process.pid
        # Lower the running proxy's limit to a few more descriptors than it holds: the connection budget it
        # computed at start no longer fits, as when something else in the process holds descriptors.
        in_use = len(list(Path(f"/proc/{pid}/fd").iterdir()))
        limit = in_use + 8
        subprocess.run(["prlimit", f"--pid={pid}", f"--nofile={limit}:{limit}"], check=True)
        log = LogTail(server.stderr_path)
        log.skip_to_now(port)
        flood = [socket.create_connection(("127.0.0.1", port)) for _ in range(100)]
        try:
            warned = [line for line in log.wait_for(1) if line["event"] == "out_of_file_descriptors"]
            assert warned, "accept(2) never ran out of descriptors"
            time.sleep(2.5)  # asyncio tries accept(2) again each second: each failure is not a log line
        finally:
            for sock in flood:
                sock.close()
        # Descriptors are free again: the proxy answers.
        assert timed_get(server.url + "/simple/tinypure/", deadline=HEADER_TIMEOUT + 3) < HEADER_TIMEOUT + 3
        lines = warned + log.new_lines()
        assert timed_get(server.url + "/healthz") < 1.0

    warnings = [line for line in lines if line["event"] == "out_of_file_descriptors"]
    assert len(warnings) == 1, warnings
    assert len([line for line in lines if line["event"] != "request"]) <= 3, lines
    assert "Traceback" not in server.stderr()


def test_when_every_connection_is_busy_a_new_one_gets_503_at_once(
    upstream: FakeUpstreamServer, tmp_path: Path
) -> None:
    port = free_port()
    args = serve_args(port, tmp_path / "cache", upstream, "--server-max-connections", "2")
    with wheelfarm_serve(args, port, tmp_path / "server") as server:
        upstream.index.page_delay = 3.0  # two requests wait for upstream: both connections are busy
        try:
            with _in_thread(lambda: _busy_requests(server.url, ["busy-one", "busy-two"])) as busy:
                # Once both are in progress (upstream has been asked for both), a new connection is
                # refused, at once.
                asked = upstream.index.page_requests
                wait_for(
                    lambda: bool(asked["busy-one"] and asked["busy-two"]),
                    "both requests in progress",
                )
                started = time.monotonic()
                refused = exchange(port, b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                refused_after = time.monotonic() - started
            statuses, _ = busy.result()
        finally:
            upstream.index.page_delay = 0.0
        assert timed_get(server.url + "/simple/tinypure/") < 1.0
        count = metric(server.url, "wheelfarm_connections_closed_total", reason="refused")
    assert refused.status == 503, refused.raw
    assert refused.header("Retry-After") == "1"
    assert refused_after < 1.5
    assert statuses == [404.0, 404.0]  # the busy ones were answered (no such projects upstream)
    assert count >= 1


async def _busy_requests(url: str, projects: list[str]) -> tuple[list[float], int]:
    async def one(project: str) -> float:
        async with httpx.AsyncClient(timeout=10) as client:
            return float((await client.get(f"{url}/simple/{project}/", headers=PAGE_ACCEPT)).status_code)

    return list(await asyncio.gather(*(one(p) for p in projects))), 0


MALFORMED: Final = [
    b"GARBAGE\r\n\r\n",
    b"GET / HTTP/1.1\r\nBad Header\r\n\r\n",
    b"GET /\x00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + bytes(40),  # a TLS ClientHello
    b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",  # the HTTP/2 preface (RFC 9113 section 3.4)
    b"GET / HTTP/9.9\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET / HTTP/1.1\r\n" + b"".join(b"X-%d: y\r\n" % i for i in range(200)) + b"\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Evil: a\rb\r\n\r\n",
]


def test_malformed_requests_get_one_json_line_each_and_a_count(
    upstream: FakeUpstreamServer, tmp_path: Path
) -> None:
    port = free_port()
    with wheelfarm_serve(serve_args(port, tmp_path / "cache", upstream), port, tmp_path / "server") as server:
        log = LogTail(server.stderr_path)
        log.skip_to_now(port)
        answers = []
        for request in MALFORMED:
            response = exchange(port, request)
            lines = log.wait_for(1)
            answers.append((request[:30], response.status, lines))
            assert response.status == 400, (request[:60], response.raw[:300])
            assert b"GARBAGE" not in response.body  # nothing the client sent is echoed
            assert b"aaaa" not in response.body
            assert response.header("X-Content-Type-Options") == "nosniff"
        counted = metric(server.url, "wheelfarm_requests_total", route="malformed", status="400")
    for request, status, lines in answers:
        assert len(lines) == 1, (request, lines)
        (line,) = lines
        assert (line["event"], line["status"], line["path"]) == ("request", status, None), line
        assert line["error"], line
        assert len(line["error"]) < 120
    assert counted == len(MALFORMED)
    assert "Traceback" not in server.stderr()


def _read_response(sock: socket.socket) -> float:
    """Read one small response on a kept-alive connection; the time it arrived."""
    sock.settimeout(5)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(
        next(h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length")).split(b":")[1]
    )
    while len(body) < length:
        body += sock.recv(4096)
    return time.monotonic()


class _Result:
    def __init__(self) -> None:
        self.value: tuple[list[float], int] | None = None
        self.error: BaseException | None = None

    def result(self) -> tuple[list[float], int]:
        if self.error is not None:
            raise self.error
        assert self.value is not None
        return self.value


@contextlib.contextmanager
def _in_thread(scenario: Callable[[], Coroutine[Any, Any, tuple[list[float], int]]]) -> Iterator[_Result]:
    """Run the async ``scenario`` in a thread until the block ends."""
    result = _Result()

    def main() -> None:
        try:
            result.value = asyncio.run(scenario())
        except BaseException as exc:
            result.error = exc

    thread = threading.Thread(target=main, name="slow-clients")
    thread.start()
    try:
        yield result
    finally:
        thread.join(60)
