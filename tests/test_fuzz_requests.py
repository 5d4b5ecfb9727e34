"""Hypothesis against the whole request surface of the real `wheelfarm serve` (admin included): methods,
paths, query strings and headers, valid and not. Whatever arrives, the proxy answers something other than a
5xx of its own (the fake upstream is healthy), and writes exactly one access-log line for it.

Bounded to well under a minute: WHEELFARM_FUZZ_EXAMPLES (default 1000) requests, about 10 s.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Final
from urllib.parse import quote

import pytest
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import free_port
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rawhttp import LogTail, exchange
from serve import RunningServer, wheelfarm_serve

EXAMPLES: Final = int(os.environ.get("WHEELFARM_FUZZ_EXAMPLES", "1000"))
TOKEN: Final = "fuzz-token"
WHEEL: Final = FakeFile("tinypure-1.0-py3-none-any.whl", b"PK\x05\x06" + bytes(18))
TARGET: Final = "cp311-manylinux_2_36_x86_64"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[RunningServer, int, LogTail]]:
    index = FakeIndex()
    index.add_file("tinypure", WHEEL)
    workdir = tmp_path_factory.mktemp("fuzz")
    port = free_port()
    with FakeUpstreamServer(index) as upstream:
        args = ["--port", str(port), "--cache-dir", str(workdir / "cache"), "--upstream", upstream.simple_url,
                "--builder-enabled", "no", "--logging-format", "json", "--admin-enabled", "yes",
                "--server-idle-timeout", "2", "--server-header-timeout", "2"]  # fmt: skip
        with wheelfarm_serve(args, port, workdir / "server", {"WHEELFARM_ADMIN_TOKEN": TOKEN}) as running:
            log = LogTail(running.stderr_path)
            log.skip_to_now(port)
            yield running, port, log


PREFIXES: Final = [
    "/", "//", "/simple/", "/simple/tinypure/", "/simple/TinyPure", "/simple/tinypure", "/plain/simple/",
    f"/t/{TARGET}/simple/", "/t/nonsense/simple/", f"/files/tinypure/{WHEEL.sha256}/", "/files/tinypure/",
    f"/build/{TARGET}/tinypure/{WHEEL.sha256}/", f"/built/{WHEEL.sha256}/{TARGET}/", "/healthz", "/metrics",
    "/admin/", "/admin/api/summary", "/admin/api/builds", "/admin/api/projects/", "/admin/api/evict",
    "/admin/api/build-ahead", "/simple/../", "/%2e%2e/", "/simple/%00/",
]  # fmt: skip
HEADER_NAMES: Final = [
    "Accept", "Accept-Encoding", "User-Agent", "Range", "If-None-Match", "If-Range", "X-Request-ID",
    "Authorization", "Cookie", "Host", "Expect", "Origin", "Referer", "X-Forwarded-For", "Accept-Language",
]  # fmt: skip
ACCEPTS: Final = [
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html; q=0.1, text/html; q=0.01",
    "application/vnd.pypi.simple.latest+json", "text/html", "*/*", "application/json;q=0", "a/b;q=x",
    "text/html;q=1.5, */*;q=-1", ",,,;;;", "application/vnd.pypi.simple.v1+json;q=0.0000001",
]  # fmt: skip

_url_text = st.text(st.characters(codec="utf-8"), max_size=40)
_paths = st.builds(lambda p, t: p + quote(t, safe="/%;,=&@:+$!*'()~"), st.sampled_from(PREFIXES), _url_text)
_queries = st.one_of(
    st.just(""),
    st.builds(lambda q: "?" + quote(q, safe="=&%/+"), _url_text),
    st.sampled_from(["?format=json", "?format=html", "?format=", "?format=%00", "?a=%0d%0aX: y"]),
)
_header_values = st.one_of(
    st.text(st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=60),
    st.sampled_from(ACCEPTS),
    st.builds(
        lambda d: "pip/24.0 " + json.dumps(d), st.dictionaries(st.text(max_size=8), st.text(max_size=8))
    ),
    st.sampled_from([f"Bearer {TOKEN}", "bytes=-16384", "bytes=0-0,5-", "bytes=99999999-", "100-continue"]),
    st.binary(max_size=20).map(lambda b: b.decode("latin-1")),  # control characters: a parser error
)
_headers = st.lists(
    st.tuples(
        st.one_of(st.sampled_from(HEADER_NAMES), st.from_regex(r"\AX-[A-Za-z0-9-]{1,20}\Z")), _header_values
    ),
    max_size=8,
)
_methods = st.one_of(
    st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH", "TRACE"]),
    st.from_regex(r"\A[A-Z]{1,12}\Z"),
)


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    database=None,  # examples are cheap to find again; no .hypothesis folder in the work tree
)
@given(method=_methods, path=_paths, query=_queries, headers=_headers, body=st.binary(max_size=64))
def test_any_request_gets_an_answer_of_ours_and_one_log_line(
    server: tuple[RunningServer, int, LogTail],
    method: str,
    path: str,
    query: str,
    headers: list[tuple[str, str]],
    body: bytes,
) -> None:
    _, port, log = server
    lines = [f"{method} {path}{query} HTTP/1.1", "Host: 127.0.0.1"]
    lines += [f"{name}: {value}" for name, value in headers]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    lines.append("Connection: close")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1", "replace") + body
    response = exchange(port, request)
    # The server logs a request before it closes the connection, so the line is there now.
    logged = log.new_lines()
    assert response.status, f"no answer to {request[:200]!r}"
    assert response.status < 500, (request[:300], response.raw[:500])
    requests = [line for line in logged if line["event"] == "request"]
    assert len(requests) == 1, (request[:300], logged)
    assert requests[0]["status"] == response.status, (requests, response.raw[:200])
    assert [line for line in logged if line["level"] == "error"] == [], logged
    assert "Traceback" not in log.text
