"""No callback holds the proxy's event loop: its main paths, driven over HTTP under a watchdog (issue 13).

ruff's ASYNC rules catch the blocking calls they know by name inside ``async def``; this catches what they
cannot see: a blocking call in a synchronous helper, CPU-heavy work done inline, file I/O in a library. The
watchdog (tests/loopwatch.py) times every callback the proxy's loop runs, by CPU time and time asleep, so a
loaded CI machine does not make it cry wolf; a callback over a limit fails the test, named with the lines
it was busy in.

The limits: 0.1 s of CPU time, 0.2 s asleep. Pages of RENDER_IN_THREAD_FROM (1000) files or more render
in a thread (proxy/pages/overlaid.py); the big project here has more, so its renders must leave the loop.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from buildkit import (
    ADMIN_TOKEN,
    TARGET,
    absolute,
    build_records,
    delete_build,
    files,
    page,
    pending_links,
    start_builder_proxy,
)
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import FakeClock, ProxyServer, wait_for, watch_proxy_loop
from loopwatch import LoopWatch

from proxy.index.render import render_project

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
SCOPE = f"/t/{TARGET}"  # pages for a target carry the build overlay
HTML = {"Accept": "text/html"}
BIG = "bigpkg"
BIG_RELEASES = 1500  # a wheel and an sdist each: 3000 files
BUILT_WHEEL = "tinypure-3.0-py2.py3-none-any.whl"


@pytest.fixture
def big_index(build_index: FakeIndex) -> FakeIndex:
    """build_index plus a project of 3000 files: releases with a pure wheel and an sdist each."""
    big: list[FakeFile] = []
    for minor in range(BIG_RELEASES):
        big.append(FakeFile(f"{BIG}-1.{minor}-py3-none-any.whl", b"wheel %d" % minor))
        big.append(FakeFile(f"{BIG}-1.{minor}.tar.gz", b"sdist %d" % minor))
    with build_index.lock:  # one change, not 3000 (add_file looks for the name among all files)
        build_index.projects[BIG] = big
        build_index.touch(BIG)
    return build_index


class Driver:
    """The proxy's HTTP surface for one test: each request labels the watch with what it is."""

    def __init__(self, proxy: ProxyServer, watch: LoopWatch, client: httpx.Client) -> None:
        self.proxy = proxy
        self.watch = watch
        self.client = client

    def get(self, path: str, what: str, **headers: str) -> httpx.Response:
        self.watch.label(f"{what} (GET {path})")
        response = self.client.get(path, headers=headers)
        assert response.status_code == 200, f"{what}: {response.status_code} {response.text[:500]}"
        return response

    def admin(self, method: str, path: str, what: str, body: dict[str, Any] | None = None) -> Any:
        self.watch.label(f"{what} ({method} /admin/api/{path})")
        response = self.client.request(method, "/admin/api/" + path, json=body, headers=AUTH)
        assert response.status_code in (200, 202), f"{what}: {response.status_code} {response.text[:500]}"
        return response.json()

    def page(self, project: str, what: str) -> dict[str, Any]:
        self.watch.label(what)
        return page(self.proxy, project)

    def file(self, project: str, entry: dict[str, Any], what: str, suffix: str = "") -> bytes:
        url = absolute(self.proxy, project, entry["url"], scope=SCOPE) + suffix
        return self.get(url.removeprefix(self.proxy.url), what).content


def drive(proxy: ProxyServer, watch: LoopWatch) -> None:
    """Every main path of the proxy once cold and once warm, as pip, uv and an operator use them."""
    with httpx.Client(base_url=proxy.url, timeout=60) as client:
        drive_with(Driver(proxy, watch, client))


def drive_with(do: Driver) -> None:
    proxy, watch = do.proxy, do.watch
    do.get("/healthz", "health")
    do.get("/simple/", "the root list, cold")
    do.get("/simple/", "the root list, warm")

    # Pages with the build overlay: JSON and HTML, cold then warm (rendered once, then from memory).
    do.page("tinypure", "a JSON page, cold")
    tinypure = do.page("tinypure", "a JSON page, warm")
    do.get(f"{SCOPE}/simple/tinydep/", "an HTML page, cold", **HTML)
    do.get(f"{SCOPE}/simple/tinydep/", "an HTML page, warm", **HTML)
    do.get(f"{SCOPE}/simple/tinypure/", "an HTML page of a page cached as JSON", **HTML)

    # A page of 3000 files: parsed, overlaid and rendered (in a thread) in both formats.
    big = do.page(BIG, "a page of 3000 files, cold")
    assert len(big["files"]) == 2 * BIG_RELEASES
    do.page(BIG, "a page of 3000 files, warm")
    assert "bigpkg-1.0.tar.gz" in do.get(f"{SCOPE}/simple/{BIG}/", "a page of 3000 files, HTML", **HTML).text
    entry = files(big)[f"{BIG}-1.7-py3-none-any.whl"]
    assert do.file(BIG, entry, "a file of the big page") == b"wheel 7"

    # Files: a download streamed from upstream, then from the cache; PEP 658 metadata and PEP 740 provenance.
    listed = files(tinypure)
    sdist = listed["tinypure-1.0.tar.gz"]
    fetched = do.file("tinypure", sdist, "a file, uncached")
    assert hashlib.sha256(fetched).hexdigest() == sdist["hashes"]["sha256"]
    assert do.file("tinypure", sdist, "a file, cached") == fetched
    wheel = listed["tinypure-2.0-py3-none-any.whl"]
    metadata = do.file("tinypure", wheel, "a wheel's .metadata, uncached", ".metadata")
    assert do.file("tinypure", wheel, "a wheel's .metadata, cached", ".metadata") == metadata
    do.file("tinypure", wheel, "a wheel, uncached")
    do.file("tinypure", wheel, "a wheel, cached")
    do.get(absolute(proxy, "tinypure", wheel["provenance"], scope=SCOPE), "a file's provenance")

    # A build through its build-pending link (the request waits for the wheel), then what it left.
    (link,) = pending_links(tinypure)
    pending_url = absolute(proxy, "tinypure", link["url"], scope=SCOPE).removeprefix(proxy.url)
    watch.label(f"a build through its pending link (GET {pending_url})")
    response = do.client.get(pending_url)
    for _ in range(5):  # 503: still building when the proxy's hold ran out; pip would retry too
        if response.status_code != 503:
            break
        response = do.client.get(pending_url)
    assert response.status_code == 200, response.text
    built = files(do.page("tinypure", "the page once built"))[BUILT_WHEEL]
    assert do.file("tinypure", built, "the built wheel") == response.content
    do.file("tinypure", built, "the built wheel's .metadata", ".metadata")
    view = do.admin("GET", "projects/tinypure", "the admin view of a project")
    (record,) = view["builds"][TARGET]
    do.get(record["log"], "the build's log")
    assert do.get(record["provenance"], "the build's provenance").json()["target"] == TARGET

    # The admin API, reads then changes.
    do.admin("GET", "summary", "the admin summary")
    do.admin("GET", "builds", "the admin list of builds")
    do.admin("GET", f"projects/{BIG}", "the admin view of a project of 3000 files")
    do.admin("POST", "verify", "starting a verify of every cached file")
    wait_for(
        lambda: do.admin("GET", "verify", "the verify report")["verify"]["state"] == "done",
        "the verify run to finish",
    )
    watch.label("deleting a build")
    assert delete_build(proxy, record["key"]["sdist_sha256"], TARGET)
    assert build_records(proxy, "tinypure") == []
    purged = do.admin("POST", "projects/tinypure/purge", "purging a project with files", {"files": True})
    assert purged["removed"]["files"] >= 2
    proxy.clock.advance(60)  # the big page's file, fetched "now", is unused for a minute
    evicted = do.admin("POST", "evict", "evicting every cached file", {"unused_for_seconds": 0})
    assert evicted["evicted_files"] >= 1
    do.page("tinypure", "a page purged, fetched again")

    do.get("/metrics", "metrics")
    do.get("/healthz", "health, at the end")


def assert_loop_never_held(watch: LoopWatch) -> None:
    assert watch.callbacks > 0, "the watch saw nothing of the proxy's loop"
    assert not watch.slow, "callbacks held the proxy's event loop:\n" + watch.report()


def test_no_callback_holds_the_loop(
    fake_upstream: FakeUpstreamServer, big_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    started = time.perf_counter()
    with watch_proxy_loop() as watch:  # from before the proxy's start (the builder's self-check) to its stop
        server = start_builder_proxy(fake_upstream, clock, tmp_path / "cache")
        try:
            drive(server, watch)
        finally:
            watch.label("stopping")
            server.stop()
    print(f"{watch.callbacks} callbacks in {time.perf_counter() - started:.1f} s")
    print(f"most CPU: {watch.most_cpu}\nmost blocked: {watch.most_blocked}")
    assert watch.callbacks > 1000, "the watch saw (almost) nothing of the proxy's loop"
    assert_loop_never_held(watch)


HOLD = 0.3  # seconds: what the deliberate blocking call below holds the loop for


def hold_the_loop_asleep() -> None:
    time.sleep(HOLD)


def hold_the_loop_busy() -> None:
    end = time.thread_time() + HOLD
    while time.thread_time() < end:
        pass


@pytest.mark.parametrize("hold", [hold_the_loop_asleep, hold_the_loop_busy])
def test_the_watch_catches_a_callback_that_holds_the_loop(
    proxy: ProxyServer, monkeypatch: pytest.MonkeyPatch, hold: Callable[[], None]
) -> None:
    """A page render made to sleep, or to spin, for 0.3 s on the loop fails the check, named by where."""

    def held_render(*args: Any) -> Any:
        hold()
        return render_project(*args)

    # Pages of fewer than 1000 files render inline, on the loop (proxy/pages/overlaid.py).
    monkeypatch.setattr("proxy.pages.overlaid.render_project", held_render)
    with watch_proxy_loop() as watch:
        watch.label("a page rendered with a hold")
        assert httpx.get(f"{proxy.url}/simple/tinypure/", timeout=30).status_code == 200
        watch.label("the page again, from memory")
        assert httpx.get(f"{proxy.url}/simple/tinypure/", timeout=30).status_code == 200
    with pytest.raises(AssertionError, match="held the proxy's event loop") as failed:
        assert_loop_never_held(watch)
    (slow,) = watch.slow
    assert slow.label == "a page rendered with a hold"
    assert hold.__name__ in str(failed.value)
    # Named by the line that held the loop and the proxy's line that called it.
    named = re.compile(
        rf"tests/test_event_loop\.py:\d+ in {hold.__name__}, from proxy/pages/overlaid\.py:\d+ in"
    )
    assert any(named.match(line) for line in slow.lines), slow.lines
    if hold is hold_the_loop_asleep:  # caught asleep, not busy
        assert slow.blocked > watch.blocked_limit
        assert slow.cpu < watch.cpu_limit
    else:
        assert slow.cpu > watch.cpu_limit
