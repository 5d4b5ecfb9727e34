"""A hostile upstream: pages that point file links at the proxy's own networks, redirect elsewhere, inflate
to gigabytes or are simply huge, list files without a hash, or answer slowly; and credentials in the
upstream's URL, which nothing may show.
"""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from aiohttp import web
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import FakeClock, ProxyServer, proxy_settings
from servers import ServerThread

JSON = "application/vnd.pypi.simple.v1+json"


@pytest.fixture
def secret_server() -> Iterator[tuple[ServerThread, list[str]]]:
    """A server on the proxy's own machine (an admin port, a metadata service): nobody may reach it."""
    seen: list[str] = []

    async def secret(request: web.Request) -> web.Response:
        seen.append(request.path)
        return web.Response(text="the proxy's secrets")

    app = web.Application()
    app.router.add_get("/{tail:.*}", secret)
    with ServerThread(app) as server:
        yield server, seen


def _file_url(proxy: ProxyServer, project: str, filename: str) -> str:
    page = httpx.get(f"{proxy.url}/simple/{project}/", headers={"Accept": JSON}, timeout=30).json()
    (entry,) = [e for e in page["files"] if e["filename"] == filename]
    return str(httpx.URL(f"{proxy.url}/simple/{project}/").join(entry["url"]))


@pytest.mark.parametrize(
    "where",
    ["loopback-port", "link-local", "private", "other-scheme"],
)
def test_file_links_to_the_proxys_own_networks_are_refused(
    proxy: ProxyServer,
    fake_index: FakeIndex,
    secret_server: tuple[ServerThread, list[str]],
    where: str,
) -> None:
    server, seen = secret_server
    listed = {
        "loopback-port": f"http://127.0.0.1:{server.port}/admin/api/summary",  # same address, another port
        "link-local": "http://169.254.169.254/latest/meta-data/",
        "private": "http://10.0.0.1/wheel.whl",
        "other-scheme": "file:///etc/passwd",
    }[where]
    fake_index.add_file("victim", FakeFile("victim-1.0-py3-none-any.whl", b"x" * 10, listed_url=listed))

    response = httpx.get(_file_url(proxy, "victim", "victim-1.0-py3-none-any.whl"), timeout=30)

    assert response.status_code == 502
    assert "refused" in response.text
    assert seen == [], "the proxy fetched from its own machine for a client"


def test_a_file_host_that_resolves_to_loopback_is_refused_unless_allowed(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    """A listed file host whose name resolves to loopback (here: localhost), as DNS rebinding would do."""
    url = f"http://localhost:{fake_upstream.port}/files/tinypure-1.0.tar.gz"
    fake_index.add_file(
        "rebound",
        FakeFile("rebound-1.0.tar.gz", fake_index.file("tinypure-1.0.tar.gz").content, listed_url=url),
    )
    outcomes = {}
    for allow in (False, True):
        settings = proxy_settings(
            tmp_path / f"cache-{allow}", fake_upstream.simple_url,
            upstream_file_hosts=(f"localhost:{fake_upstream.port}",), upstream_allow_private_networks=allow,
        )  # fmt: skip
        with ProxyServer(settings, clock) as proxy:
            outcomes[allow] = httpx.get(_file_url(proxy, "rebound", "rebound-1.0.tar.gz"), timeout=30)

    assert outcomes[False].status_code == 502
    assert "loopback, link-local or private addresses" in outcomes[False].text
    assert outcomes[True].status_code == 200  # the operator allowed it


def test_redirects_stay_on_allowed_hosts(
    proxy: ProxyServer, fake_index: FakeIndex, secret_server: tuple[ServerThread, list[str]]
) -> None:
    server, seen = secret_server
    fake_index.page_overrides["elsewhere"] = (
        302,
        {"Location": f"http://127.0.0.1:{server.port}/simple/x/"},
        b"",
    )
    fake_index.page_overrides["moved"] = (301, {"Location": "/simple/tinypure/"}, b"")

    away = httpx.get(f"{proxy.url}/simple/elsewhere/", headers={"Accept": JSON}, timeout=30)
    within = httpx.get(f"{proxy.url}/simple/moved/", headers={"Accept": JSON}, timeout=30)

    assert away.status_code == 502
    assert "a redirect for project page 'elsewhere'" in away.text
    assert seen == []
    assert within.status_code == 200  # a redirect on the upstream's own host is followed
    assert {f["filename"] for f in within.json()["files"]} >= {"tinypure-2.0.tar.gz"}


def test_a_gzip_bomb_page_is_refused_naming_the_limit(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    bomb = gzip.compress(
        b'{"meta": {"api-version": "1.1"}, "name": "bomb", "files": [' + b" " * (40 << 20) + b"]}"
    )
    assert len(bomb) < 100_000
    fake_index.page_overrides["bomb"] = (200, {"Content-Type": JSON, "Content-Encoding": "gzip"}, bomb)
    settings = proxy_settings(tmp_path / "cache", fake_upstream.simple_url, upstream_max_page_mb=8)
    with ProxyServer(settings, clock) as proxy:
        started = time.monotonic()
        response = httpx.get(f"{proxy.url}/simple/bomb/", headers={"Accept": JSON}, timeout=30)
        elapsed = time.monotonic() - started
        healthy = httpx.get(f"{proxy.url}/healthz", timeout=5)

    assert response.status_code == 502
    assert f"inflates past the limit of {8 << 20} bytes" in response.text
    assert elapsed < 5
    assert healthy.status_code == 200


def test_a_huge_page_is_refused_and_the_cached_copy_served(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    settings = proxy_settings(tmp_path / "cache", fake_upstream.simple_url, upstream_max_page_mb=1)
    with ProxyServer(settings, clock) as proxy:
        first = httpx.get(f"{proxy.url}/simple/tinypure/", headers={"Accept": JSON}, timeout=30)
        huge = json.dumps(
            {"meta": {"api-version": "1.1"}, "name": "tinypure", "files": [], "pad": "x" * (2 << 20)}
        )
        fake_index.page_overrides["tinypure"] = (200, {"Content-Type": JSON}, huge.encode())
        clock.advance(3600)
        stale = httpx.get(f"{proxy.url}/simple/tinypure/", headers={"Accept": JSON}, timeout=30)
        fake_index.page_overrides["tinydep"] = (200, {"Content-Type": JSON}, huge.encode())
        uncached = httpx.get(f"{proxy.url}/simple/tinydep/", headers={"Accept": JSON}, timeout=30)

    assert first.status_code == 200
    assert stale.status_code == 200
    assert stale.headers["X-Wheelfarm-Cache"] == "stale"
    assert "more than the limit of 1048576" in stale.headers["X-Wheelfarm-Stale-Reason"]
    assert stale.json()["files"] == first.json()["files"]
    assert uncached.status_code == 502
    assert f"more than the limit of {1 << 20}" in uncached.text


def test_a_file_without_a_hash_is_passed_through_and_never_kept(
    proxy: ProxyServer, fake_index: FakeIndex
) -> None:
    content = b"unverifiable bytes"
    fake_index.add_file("nohash", FakeFile("nohash-1.0.tar.gz", content, unhashed=True))
    url = _file_url(proxy, "nohash", "nohash-1.0.tar.gz")

    first = httpx.get(url, timeout=30)
    second = httpx.get(url, timeout=30)

    assert first.content == second.content == content
    assert first.headers["Cache-Control"] == "no-store"
    assert fake_index.file_requests["nohash-1.0.tar.gz"] == 2  # nothing was kept: fetched again


def test_a_slow_upstream_gets_the_stale_page_served_within_pips_patience(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    settings = proxy_settings(
        tmp_path / "cache", fake_upstream.simple_url, upstream_read_timeout=30.0, cache_revalidate_wait=2.0
    )
    with ProxyServer(settings, clock) as proxy:
        assert httpx.get(f"{proxy.url}/simple/tinypure/", timeout=30).status_code == 200
        clock.advance(3600)
        fake_index.page_delay = 10.0  # slower than pip's 15 s? no: slower than our revalidate_wait
        started = time.monotonic()
        slow = httpx.get(f"{proxy.url}/simple/tinypure/", timeout=30)
        waited = time.monotonic() - started
        fake_index.page_delay = 0.0

    assert slow.status_code == 200
    assert slow.headers["X-Wheelfarm-Cache"] == "stale"
    assert "being revalidated" in slow.headers["X-Wheelfarm-Stale-Reason"]
    assert 1.5 < waited < 5


def test_credentials_in_the_upstream_url_are_shown_nowhere(
    fake_upstream: FakeUpstreamServer, clock: FakeClock, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with_credentials = fake_upstream.simple_url.replace("http://", "http://builder:hunter2-secret@")
    settings = proxy_settings(tmp_path / "cache", with_credentials, admin_enabled=True, logging_format="json")
    with ProxyServer(settings, clock) as proxy:
        summary = httpx.get(f"{proxy.url}/admin/api/summary", timeout=30)
        page = httpx.get(f"{proxy.url}/simple/tinypure/", headers={"Accept": JSON}, timeout=30)
        metrics = httpx.get(f"{proxy.url}/metrics", timeout=30)
        missing = httpx.get(f"{proxy.url}/simple/no-such-project-here/", timeout=30)
    logged = capsys.readouterr()

    assert summary.json()["upstream"].startswith("http://***@127.0.0.1:")
    for text in (summary.text, page.text, metrics.text, missing.text, logged.out, logged.err):
        assert "hunter2-secret" not in text


def test_a_page_of_hundreds_of_thousands_of_files_does_not_stall_other_requests(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    files = [
        {
            "filename": f"big-{n}.0.tar.gz",
            "url": f"/files/big-{n}.0.tar.gz",
            "hashes": {"sha256": f"{n:064x}"},
        }
        for n in range(200_000)
    ]
    body = json.dumps({"meta": {"api-version": "1.1"}, "name": "big", "files": files}).encode()
    fake_index.page_overrides["big"] = (200, {"Content-Type": JSON}, body)
    settings = proxy_settings(tmp_path / "cache", fake_upstream.simple_url, upstream_read_timeout=60.0)
    with ProxyServer(settings, clock) as proxy, ThreadPoolExecutor(1) as pool:
        big = pool.submit(httpx.get, f"{proxy.url}/simple/big/", headers={"Accept": JSON}, timeout=120)
        slowest = 0.0
        while not big.done():
            started = time.monotonic()
            assert httpx.get(f"{proxy.url}/healthz", timeout=10).status_code == 200
            slowest = max(slowest, time.monotonic() - started)
            time.sleep(0.05)
        answer = big.result()

    assert answer.status_code == 200
    assert len(answer.json()["files"]) == 200_000
    assert slowest < 1.0, f"a health check waited {slowest:.2f} s behind the big page"
