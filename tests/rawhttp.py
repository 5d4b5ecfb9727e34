"""Raw HTTP/1.1 over sockets, for requests no HTTP client library would send, and the server's log read
as it grows (tests of the edge: malformed requests, slow clients, one log line per request)."""

from __future__ import annotations

import contextlib
import json
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families


@dataclass(frozen=True)
class RawResponse:
    """The final response: interim 1xx ones (100 Continue) before it are skipped (RFC 9110 section 15.2)."""

    raw: bytes

    def __post_init__(self) -> None:
        raw = self.raw
        while re.match(rb"HTTP/1\.[01] 1\d\d ", raw) and b"\r\n\r\n" in raw:
            raw = raw.partition(b"\r\n\r\n")[2]
        object.__setattr__(self, "raw", raw)

    @property
    def status(self) -> int:
        """The status code, or 0 when the server closed the connection without answering."""
        parts = self.raw.split(b" ", 2)
        return int(parts[1]) if len(parts) > 1 and parts[0].startswith(b"HTTP/") else 0

    @property
    def head(self) -> str:
        return self.raw.partition(b"\r\n\r\n")[0].decode("latin-1")

    @property
    def body(self) -> bytes:
        return self.raw.partition(b"\r\n\r\n")[2]

    def header(self, name: str) -> str | None:
        for line in self.head.split("\r\n")[1:]:
            key, _, value = line.partition(":")
            if key.strip().lower() == name.lower():
                return value.strip()
        return None


def exchange(port: int, data: bytes, timeout: float = 15.0) -> RawResponse:
    """Send ``data`` on a new connection and read until the server closes it (or resets it)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        # The server may answer and close before reading it all: then read what it said.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            sock.sendall(data)
        chunks = []
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except ConnectionResetError:
                break
            if not chunk:
                break
            chunks.append(chunk)
    return RawResponse(b"".join(chunks))


class LogTail:
    """The lines a server wrote to its stderr file since the last call, each parsed as JSON."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._offset = 0
        self.text = ""  # everything read so far

    def new_lines(self) -> list[dict[str, Any]]:
        with self._path.open("rb") as stream:
            stream.seek(self._offset)
            data = stream.read()
        complete = data[: data.rfind(b"\n") + 1]
        self._offset += len(complete)
        text = complete.decode("utf-8", "replace")
        self.text += text
        lines = []
        for line in text.splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                raise AssertionError(f"log line is not JSON: {line!r}") from None
        return lines

    def skip_to_now(self, port: int) -> None:
        """Forget every line so far. A request with Connection: close marks the spot: the server logs a
        request before it closes the connection (a plain client may see the answer before the line)."""
        marker = f"settle-{time.monotonic_ns()}"
        request = f"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Request-ID: {marker}\r\n\r\n"
        assert exchange(port, request.encode()).status == 200
        lines = self.new_lines()
        assert any(line.get("request_id") == marker for line in lines), lines

    def wait_for(self, count: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        """At least ``count`` new lines (waiting for them to be written), and all that came with them."""
        deadline = time.monotonic() + timeout
        lines = self.new_lines()
        while len(lines) < count and time.monotonic() < deadline:
            time.sleep(0.01)
            lines += self.new_lines()
        return lines


def metric(url: str, name: str, **labels: str) -> float:
    """One sample of the proxy's /metrics (0 when absent)."""
    text = httpx.get(url + "/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0
