"""The cache on a full disk: a file that cannot fit is refused with a clear answer before any byte, a disk
that fills during a download cuts only that download, the operator gets one log line and a metric, and
everything already cached (pages and files) is still served. The cache folder is a small tmpfs the tests
mount, so they need root."""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Iterator, MutableMapping
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import FakeClock, ProxyServer, proxy_settings, wait_for
from test_admin_api import fetch_file

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small disk for the cache needs root")

DISK_MB = 24
BIG = "bigpkg-1.0-py3-none-any.whl"
BIG_SIZE = 8 * 1024 * 1024


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    cache = tmp_path / "cache"
    cache.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(cache)], check=True)
    try:
        yield cache
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)


@pytest.fixture
def proxy_on_small_disk(
    small_disk: Path, fake_upstream: FakeUpstreamServer, clock: FakeClock
) -> Iterator[ProxyServer]:
    settings = proxy_settings(small_disk, fake_upstream.simple_url, cache_min_free_mb=1)
    with ProxyServer(settings, clock) as proxy:
        yield proxy


def free_bytes(folder: Path) -> int:
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize


def fill(folder: Path, name: str, leave: int = 0) -> None:
    """Write a file into ``folder`` until no more than ``leave`` bytes are free there."""
    block = b"\0" * (256 * 1024)
    with (folder / name).open("wb") as handle, contextlib.suppress(OSError):
        while (room := free_bytes(folder) - leave) > 0:
            handle.write(block[: min(room, len(block))])
            handle.flush()


@pytest.fixture
def big(fake_index: FakeIndex) -> FakeFile:
    return fake_index.add_file("bigpkg", FakeFile(BIG, os.urandom(BIG_SIZE)))


def disk_full_lines(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [line for line in logs if line["event"] == "cache_disk_full"]


def test_no_room_for_a_file_is_a_507_before_any_byte_and_the_rest_still_serves(
    proxy_on_small_disk: ProxyServer, fake_index: FakeIndex, big: FakeFile, small_disk: Path, clock: FakeClock
) -> None:
    proxy = proxy_on_small_disk
    small = fake_index.file("tinypure-1.0.tar.gz")
    assert fetch_file(proxy, "tinypure", small.filename).content == small.content
    fill(small_disk, "filler")
    with structlog.testing.capture_logs() as logs:
        for _ in range(3):
            refused = fetch_file(proxy, "bigpkg", BIG)
            assert refused.status_code == 507
            assert refused.headers["Content-Type"].startswith("text/plain")
            assert "not enough room" in refused.text
            assert BIG in refused.text
        # Known to be short before asking upstream: no download was started.
        assert fake_index.file_requests[BIG] == 0
        # What the proxy has, it still serves: the cached file, the page (also revalidated), a new page.
        cached = fetch_file(proxy, "tinypure", small.filename)
        assert (cached.status_code, cached.headers["X-Wheelfarm-Cache"]) == (200, "hit")
        assert cached.content == small.content
        clock.advance(proxy.settings.cache_page_ttl + 1)
        assert httpx.get(proxy.url + "/simple/tinypure/").status_code == 200
        assert httpx.get(proxy.url + "/simple/tinydep/").status_code == 200
    (line,) = disk_full_lines(logs)
    assert line["log_level"] == "error"
    assert proxy.metric("wheelfarm_disk_full_total", store="files", stage="before_download") == 3
    assert (proxy.metric("wheelfarm_disk_full_total", store="pages", stage="write") or 0) >= 1
    (small_disk / "filler").unlink()
    served = fetch_file(proxy, "bigpkg", BIG)
    assert served.status_code == 200
    assert served.content == big.content


def test_disk_filling_during_a_download_cuts_it_and_logs_once(
    proxy_on_small_disk: ProxyServer, fake_index: FakeIndex, big: FakeFile, small_disk: Path
) -> None:
    proxy = proxy_on_small_disk
    fake_index.file_chunk = 64 * 1024
    fake_index.file_delay = 0.02  # about 2.6 s upstream
    fill(small_disk, "filler", leave=BIG_SIZE + (4 << 20))  # room when the download starts
    partial = small_disk / "files" / "partial"
    outcome: dict[str, Any] = {}

    def download() -> None:
        received = b""
        try:
            listed = httpx.get(f"{proxy.url}/simple/bigpkg/?format=json").json()["files"]
            url = str(httpx.URL(f"{proxy.url}/simple/bigpkg/").join(listed[0]["url"]))
            with httpx.stream("GET", url, timeout=30) as response:
                outcome["status"] = response.status_code
                for chunk in response.iter_bytes():
                    received += chunk
        except httpx.HTTPError as exc:
            outcome["error"] = type(exc).__name__
        outcome["bytes"] = len(received)

    with structlog.testing.capture_logs() as logs:
        client = threading.Thread(target=download)
        client.start()
        wait_for(lambda: any(p.stat().st_size > 512 * 1024 for p in partial.iterdir()), "the download")
        fill(small_disk, "more-filler")
        client.join(30)
        wait_for(lambda: not any(partial.iterdir()), "the partial file to go")
    assert outcome["status"] == 200  # the headers were out before the disk filled
    assert outcome["error"] == "RemoteProtocolError"
    assert outcome["bytes"] < BIG_SIZE
    assert not (small_disk / "files" / "blobs" / big.sha256[:2] / big.sha256).exists()
    (line,) = disk_full_lines(logs)
    assert BIG in line["file"]
    assert proxy.metric("wheelfarm_disk_full_total", store="files", stage="during_download") == 1
    (small_disk / "more-filler").unlink()
    fake_index.file_delay = 0
    assert fetch_file(proxy, "bigpkg", BIG).content == big.content
