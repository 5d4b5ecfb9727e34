"""What browsers and terminals get: security headers on every admin response (the page, the JSON, every
error, on either listener), and error bodies that carry no markup, control sequences or credentials from
what clients or upstream sent."""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterator
from typing import Final

import httpx
import pytest
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import free_port
from rawhttp import exchange
from serve import RunningServer, wheelfarm_serve

from proxy.admin.api import PAGE

TOKEN: Final = "t0ken-for-headers"
ADMIN_HEADERS: Final = {
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
}
# A file upstream lists at a URL that no longer exists, chosen to hurt whoever displays it: an ANSI escape
# (clears a terminal), a right-to-left override (CVE-2021-42574), markup, and credentials.
HOSTILE_PATH: Final = "/gone/\x1b[2J<script>alert(1)</script>\u202ekcatta.whl"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstreamServer]:
    index = FakeIndex()
    index.add_file("tinypure", FakeFile("tinypure-1.0-py3-none-any.whl", b"PK\x05\x06" + bytes(18)))
    with FakeUpstreamServer(index) as server:
        hostile = FakeFile("tinypure-1.1-py3-none-any.whl", b"PK\x05\x06" + bytes(19))
        hostile.listed_url = server.url.replace("://", "://user:hunter2@") + HOSTILE_PATH
        index.add_file("tinypure", hostile)
        yield server


@pytest.fixture(scope="module", params=["at /admin/", "own listener"])
def admin(
    request: pytest.FixtureRequest, upstream: FakeUpstreamServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[RunningServer, str, int]]:
    """A proxy with admin on, and the admin base URL and port."""
    workdir = tmp_path_factory.mktemp("admin")
    port = free_port()
    args = ["--port", str(port), "--cache-dir", str(workdir / "cache"), "--upstream", upstream.simple_url,
            "--builder-enabled", "no", "--logging-format", "json", "--admin-enabled", "yes"]  # fmt: skip
    admin_port = port
    if request.param == "own listener":
        admin_port = free_port()
        args += ["--admin-listen", f"127.0.0.1:{admin_port}"]
    with wheelfarm_serve(args, port, workdir / "server", {"WHEELFARM_ADMIN_TOKEN": TOKEN}) as server:
        base = f"http://127.0.0.1:{admin_port}" + ("/admin" if admin_port == port else "")
        yield server, base, admin_port


def inline_hashes(kind: str) -> set[str]:
    blocks = re.findall(rf"<{kind}>(.*?)</{kind}>", PAGE.read_text(encoding="utf-8"), re.DOTALL)
    return {"'sha256-" + base64.b64encode(hashlib.sha256(b.encode()).digest()).decode() + "'" for b in blocks}


def directives(policy: str) -> dict[str, str]:
    return {d.split()[0]: d.partition(" ")[2] for d in (p.strip() for p in policy.split(";")) if d}


def assert_admin_headers(headers: httpx.Headers | dict[str, str], what: str) -> dict[str, str]:
    lowered = {k.lower(): v for k, v in headers.items()}
    for name, value in ADMIN_HEADERS.items():
        assert lowered.get(name) == value, (what, name, lowered)
    policy = directives(lowered.get("content-security-policy", ""))
    assert policy.get("frame-ancestors") == "'none'", (what, policy)
    return policy


def test_the_page_allows_exactly_its_inline_script_and_style(admin: tuple[RunningServer, str, int]) -> None:
    _, base, _ = admin
    page = httpx.get(base + "/")
    assert page.status_code == 200
    policy = assert_admin_headers(page.headers, "page")
    assert policy["default-src"] == "'none'"
    assert set(policy["script-src"].split()) == inline_hashes("script")
    assert set(policy["style-src"].split()) == inline_hashes("style")
    assert policy["connect-src"] == "'self'"
    assert "unsafe-inline" not in page.headers["content-security-policy"]
    # A hash-only policy blocks attribute styles and handlers: the page must have none.
    markup = page.text
    assert not re.search(r"<[^>]+\s(style|on[a-z]+)\s*=", markup), "inline attributes are blocked by the CSP"


@pytest.mark.parametrize(
    ("method", "path", "headers", "status"),
    [
        ("GET", "/api/summary", {}, 200),
        ("HEAD", "/api/builds", {}, 404),
        ("GET", "/api/projects/%3Cscript%3E", {}, 400),
        ("GET", "/api/no-such-thing", {}, 404),
        ("POST", "/api/evict", {}, 401),
        ("POST", "/api/evict", {"Authorization": f"Bearer {TOKEN}"}, 400),
        ("DELETE", "/api/builds/" + "0" * 64 + "/cp311-manylinux_2_36_x86_64", {}, 401),
        ("PUT", "/api/summary", {"Authorization": f"Bearer {TOKEN}"}, 405),
    ],
)
def test_every_admin_response_carries_the_headers(
    admin: tuple[RunningServer, str, int], method: str, path: str, headers: dict[str, str], status: int
) -> None:
    _, base, _ = admin
    response = httpx.request(method, base + path, headers=headers)
    assert response.status_code == status, response.text
    policy = assert_admin_headers(response.headers, f"{method} {path}")
    assert policy["default-src"] == "'none'"  # JSON and errors: nothing to run or load
    assert "script-src" not in policy


def test_a_request_the_admin_listener_cannot_parse_is_answered_with_the_headers(
    admin: tuple[RunningServer, str, int],
) -> None:
    _, _, port = admin
    response = exchange(port, b"GET /api/summary HTTP/1.1\r\nBad Header\r\n\r\n")
    assert response.status == 400
    assert response.header("X-Content-Type-Options") == "nosniff"
    policy = directives(response.header("Content-Security-Policy") or "")
    assert policy.get("default-src") == "'none'"
    assert policy.get("frame-ancestors") == "'none'"
    assert b"Bad Header" not in response.body


def test_error_bodies_escape_what_upstream_and_clients_sent(
    admin: tuple[RunningServer, str, int], upstream: FakeUpstreamServer
) -> None:
    server, _, _ = admin
    listed = httpx.get(
        server.url + "/simple/tinypure/", headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    (hostile,) = [f for f in listed.json()["files"] if f["filename"] == "tinypure-1.1-py3-none-any.whl"]
    gone = httpx.get(str(httpx.URL(server.url + "/simple/tinypure/").join(hostile["url"])))
    echoed_path = httpx.get(server.url + "/files/tinypure/%1b%5b2J%e2%80%ae/x.whl")
    echoed_name = httpx.get(server.url + "/simple/%1b%5b31m%3Cb%3E/", headers={"X-Request-ID": "<b>id</b>"})
    for response in (gone, echoed_path, echoed_name):
        assert 400 <= response.status_code < 500 or response.status_code == 502, response.text
        assert response.headers["content-type"].startswith("text/plain")
        assert response.headers["x-content-type-options"] == "nosniff"
        assert directives(response.headers["content-security-policy"])["default-src"] == "'none'"
        body = response.text
        assert "\x1b" not in body, body
        assert "\u202e" not in body, body
        assert "hunter2" not in body, body
        assert "<b>id</b>" not in body + str(response.headers), response.headers
    assert "\\u001b[2J<script>" in gone.text  # shown, escaped, so an operator can see what upstream listed
