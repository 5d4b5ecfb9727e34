"""Files through the running proxy: content-addressed cache, single flight, hash checks, Range, metadata."""

from __future__ import annotations

import hashlib
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from conftest import PROVENANCE, PROVENANCE_FILE
from fake_upstream import FakeFile, FakeIndex
from fakes import FakeClock, ProxyServer

BIG = "bigpkg-1.0-py3-none-any.whl"
BIG_SIZE = 3 * 1024 * 1024 + 123


@pytest.fixture
def big_file(fake_index: FakeIndex) -> FakeFile:
    """3 MiB of random bytes (files are opaque to the proxy), served slowly enough to overlap clients."""
    dist = FakeFile(filename=BIG, content=os.urandom(BIG_SIZE))
    fake_index.add_file("bigpkg", dist)
    return dist


def file_url(proxy: ProxyServer, project: str, dist: FakeFile) -> str:
    page = httpx.get(proxy.url + f"/simple/{project}/?format=json").json()
    (entry,) = [f for f in page["files"] if f["filename"] == dist.filename]
    return str(httpx.URL(proxy.url + f"/simple/{project}/").join(entry["url"]))


def partial_files(proxy: ProxyServer) -> list[Path]:
    return list((proxy.settings.cache_dir / "files" / "partial").iterdir())


def test_file_is_downloaded_once_then_served_from_cache(proxy: ProxyServer, fake_index: FakeIndex) -> None:
    dist = fake_index.file("tinypure-1.0.tar.gz")
    url = file_url(proxy, "tinypure", dist)
    first = httpx.get(url)
    assert first.status_code == 200
    assert first.content == dist.content
    second = httpx.get(url)
    assert second.content == dist.content
    assert second.headers["Accept-Ranges"] == "bytes"
    assert fake_index.file_requests[dist.filename] == 1
    # The blob is stored under its sha256 and nothing partial is left behind.
    assert (
        proxy.settings.cache_dir / "files" / "blobs" / dist.sha256[:2] / dist.sha256
    ).read_bytes() == dist.content
    assert partial_files(proxy) == []


def test_range_and_etag_on_cached_files(proxy: ProxyServer, big_file: FakeFile) -> None:
    url = file_url(proxy, "bigpkg", big_file)
    httpx.get(url)
    tail = httpx.get(url, headers={"Range": "bytes=-16384"})  # what uv asks for a wheel without metadata
    assert tail.status_code == 206
    assert tail.content == big_file.content[-16384:]
    middle = httpx.get(url, headers={"Range": "bytes=100-199"})
    assert middle.content == big_file.content[100:200]
    etag = httpx.get(url).headers["ETag"]
    assert httpx.get(url, headers={"If-None-Match": etag}).status_code == 304
    head = httpx.head(url)
    assert int(head.headers["Content-Length"]) == BIG_SIZE


def test_twenty_clients_one_upstream_download_identical_bytes(
    proxy: ProxyServer, fake_index: FakeIndex, big_file: FakeFile
) -> None:
    url = file_url(proxy, "bigpkg", big_file)
    fake_index.file_chunk = 64 * 1024
    fake_index.file_delay = 0.05  # about 2.5 s upstream, so all clients join the download in flight

    def fetch(_: int) -> tuple[float, float, bytes]:
        with httpx.stream("GET", url, timeout=30) as response:
            chunks = response.iter_bytes()
            first = next(chunks)
            first_byte_at = time.monotonic()
            body = first + b"".join(chunks)
            return first_byte_at, time.monotonic(), body

    with ThreadPoolExecutor(20) as pool:
        results = list(pool.map(fetch, range(20)))
    assert fake_index.file_requests[BIG] == 1
    digests = {hashlib.sha256(body).hexdigest() for _, _, body in results}
    assert digests == {big_file.sha256}
    # Streaming, not store-and-forward: bytes flow to clients while upstream is still sending.
    first_bytes = min(first for first, _, _ in results)
    last_bytes = max(last for _, last, _ in results)
    assert last_bytes - first_bytes > 1.0


@pytest.mark.parametrize("fault", ["corrupt", "truncate", "stall"])
def test_bad_upstream_bytes_fail_every_client_and_are_never_cached(
    proxy: ProxyServer, fake_index: FakeIndex, big_file: FakeFile, fault: str
) -> None:
    url = file_url(proxy, "bigpkg", big_file)
    if fault == "corrupt":
        fake_index.corrupt_files.append(BIG)
    elif fault == "truncate":
        fake_index.truncate_files[BIG] = BIG_SIZE // 2
    else:
        fake_index.file_chunk = BIG_SIZE // 4
        fake_index.file_delay = proxy.settings.upstream_read_timeout + 1.5

    def fetch(_: int) -> str:
        try:
            with httpx.stream("GET", url, timeout=30) as response:
                body = response.read()
        except httpx.HTTPError as exc:
            return type(exc).__name__
        if response.status_code != 200:
            return f"HTTP {response.status_code}: {response.text}"
        return "complete" if body == big_file.content else f"WRONG BYTES ({len(body)})"

    with ThreadPoolExecutor(5) as pool:
        outcomes = list(pool.map(fetch, range(5)))
    assert "complete" not in outcomes
    assert not any(outcome.startswith("WRONG") for outcome in outcomes), outcomes
    assert not (proxy.settings.cache_dir / "files" / "blobs" / big_file.sha256[:2] / big_file.sha256).exists()
    # A failed download's partial file is removed once the download task ends, which may be just after its
    # last client saw the failure (a client's retry can start a second download): waited for, not raced.
    deadline = time.monotonic() + 10
    while partial_files(proxy) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert partial_files(proxy) == []
    # Upstream heals: the next request downloads again and gets the right bytes.
    fake_index.corrupt_files.clear()
    fake_index.truncate_files.clear()
    fake_index.file_delay = 0
    assert httpx.get(url).content == big_file.content


def test_mismatch_detected_before_any_byte_is_a_clear_502(proxy: ProxyServer, fake_index: FakeIndex) -> None:
    dist = fake_index.file("tinypure-1.0.tar.gz")
    url = file_url(proxy, "tinypure", dist)
    fake_index.truncate_files[dist.filename] = 0
    response = httpx.get(url)
    # Either a clean error answer or an aborted body: never a 200 with the wrong bytes.
    if response.status_code == 200:
        pytest.fail("a truncated upstream file was served as complete")
    assert response.status_code == 502
    assert "tinypure-1.0.tar.gz" in response.text


def test_metadata_and_provenance_files(proxy: ProxyServer, fake_index: FakeIndex) -> None:
    wheel = fake_index.file(PROVENANCE_FILE)
    url = file_url(proxy, "tinypure", wheel)
    metadata = httpx.get(url + ".metadata")
    assert metadata.status_code == 200
    assert metadata.content == wheel.metadata
    assert httpx.get(url + ".metadata").content == wheel.metadata
    assert fake_index.metadata_requests[PROVENANCE_FILE] == 1
    provenance = httpx.get(url + ".provenance")
    assert provenance.status_code == 200
    assert provenance.content == PROVENANCE
    sdist = fake_index.file("tinypure-2.0.tar.gz")
    missing = httpx.get(file_url(proxy, "tinypure", sdist) + ".metadata")
    assert missing.status_code == 404
    assert "no metadata file" in missing.text


def test_corrupt_metadata_is_refused(proxy: ProxyServer, fake_index: FakeIndex) -> None:
    wheel = fake_index.file(PROVENANCE_FILE)
    assert wheel.metadata is not None
    url = file_url(proxy, "tinypure", wheel) + ".metadata"
    fake_index.corrupt_files.append(PROVENANCE_FILE + ".metadata")
    for asked in (1, 2):  # nothing corrupt is kept: the next request asks upstream again
        refused = httpx.get(url)
        assert refused.status_code == 502
        assert f"{PROVENANCE_FILE}.metadata from upstream has sha256 " in refused.text
        assert f"but the index says {hashlib.sha256(wheel.metadata).hexdigest()}; not cached" in refused.text
        assert fake_index.metadata_requests[PROVENANCE_FILE] == asked
    fake_index.corrupt_files.clear()  # upstream heals: fetched once more, then served from the cache
    assert httpx.get(url).content == wheel.metadata
    assert httpx.get(url).content == wheel.metadata
    assert fake_index.metadata_requests[PROVENANCE_FILE] == 3


def test_files_not_listed_upstream_are_404(proxy: ProxyServer, fake_index: FakeIndex) -> None:
    dist = fake_index.file("tinypure-1.0.tar.gz")
    unknown = httpx.get(proxy.url + "/files/tinypure/" + "ab" * 32 + "/tinypure-9.9.tar.gz")
    assert unknown.status_code == 404
    assert "lists no file" in unknown.text
    renamed = httpx.get(proxy.url + f"/files/tinypure/{dist.sha256}/other-1.0.tar.gz")
    assert renamed.status_code == 404
    assert fake_index.file_requests[dist.filename] == 0


def test_file_deleted_upstream_after_listing_is_404(proxy: ProxyServer, fake_index: FakeIndex) -> None:
    dist = fake_index.file("tinypure-1.0.tar.gz")
    url = file_url(proxy, "tinypure", dist)
    with fake_index.lock:
        fake_index.projects["tinypure"].remove(dist)  # gone from the file host, page not yet refreshed
    response = httpx.get(url)
    assert response.status_code == 404
    assert "upstream has no file" in response.text


def test_new_upload_is_found_by_revalidating_the_page(
    proxy: ProxyServer, fake_index: FakeIndex, clock: FakeClock
) -> None:
    httpx.get(proxy.url + "/simple/tinypure/")  # cached without the new file
    late = FakeFile(filename="tinypure-3.0.tar.gz", content=b"late upload")
    fake_index.add_file("tinypure", late)
    url = proxy.url + f"/files/tinypure/{late.sha256}/{late.filename}"
    asked = fake_index.page_requests["tinypure"]
    assert httpx.get(url).status_code == 404  # a page fetched moments ago is not asked again at once
    assert fake_index.page_requests["tinypure"] == asked
    clock.advance(proxy.settings.cache_not_found_ttl)
    response = httpx.get(url)
    assert response.status_code == 200
    assert response.content == b"late upload"
    assert fake_index.page_requests["tinypure"] == asked + 1


def test_made_up_keys_cost_at_most_one_page_request(
    proxy: ProxyServer, fake_index: FakeIndex, clock: FakeClock
) -> None:
    httpx.get(proxy.url + "/simple/tinypure/")
    clock.advance(proxy.settings.cache_not_found_ttl)  # old enough to be revalidated for an unknown key
    asked = fake_index.page_requests["tinypure"]
    for _ in range(20):
        made_up = httpx.get(f"{proxy.url}/files/tinypure/{os.urandom(32).hex()}/tinypure-9.9.tar.gz")
        assert made_up.status_code == 404
        assert "lists no file" in made_up.text
    assert fake_index.page_requests["tinypure"] == asked + 1
    # A file uploaded meanwhile is found once the page is that old again.
    late = FakeFile(filename="tinypure-3.0.tar.gz", content=b"late upload")
    fake_index.add_file("tinypure", late)
    clock.advance(proxy.settings.cache_not_found_ttl)
    response = httpx.get(proxy.url + f"/files/tinypure/{late.sha256}/{late.filename}")
    assert response.status_code == 200
    assert response.content == b"late upload"
