"""Bit rot in the file store: a blob whose bytes no longer match its hash is found (first hit after a start,
background scrub, operator's verify), quarantined, never served again, and fetched again from upstream."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import httpx
from buildkit import ADMIN_TOKEN
from conftest import PROVENANCE, PROVENANCE_FILE
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import FakeClock, ProxyServer, free_port, proxy_settings, wait_for
from test_admin_api import fetch_file
from test_admin_cli import admin_args, wheelfarm

from proxy.settings import Settings

AUTH = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
WHEEL = "rotpkg-1.0-py3-none-any.whl"
SDIST = "rotpkg-1.0.tar.gz"


def blob(proxy: ProxyServer, dist: FakeFile) -> Path:
    return proxy.settings.cache_dir / "files" / "blobs" / dist.sha256[:2] / dist.sha256


def flip_a_byte(path: Path) -> bytes:
    """Rot in place (same inode, same size, same mtime as a disk would leave it); the rotted bytes."""
    stat = path.stat()
    with path.open("r+b") as handle:
        handle.seek(stat.st_size // 2)
        byte = handle.read(1)
        handle.seek(stat.st_size // 2)
        handle.write(bytes([byte[0] ^ 0x01]))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    return path.read_bytes()


def quarantined(proxy: ProxyServer) -> dict[str, bytes]:
    folder = proxy.settings.cache_dir / "files" / "quarantine"
    return {p.name: p.read_bytes() for p in folder.iterdir()} if folder.is_dir() else {}


def rot_index(fake_index: FakeIndex) -> tuple[FakeFile, FakeFile]:
    wheel = fake_index.add_file("rotpkg", FakeFile(WHEEL, os.urandom(300 * 1024)))
    sdist = fake_index.add_file("rotpkg", FakeFile(SDIST, os.urandom(20 * 1024)))
    return wheel, sdist


def settings_for(upstream: FakeUpstreamServer, cache: Path, **changes: Any) -> Settings:
    return proxy_settings(cache, upstream.simple_url, admin_enabled=True, admin_token=ADMIN_TOKEN, **changes)


def test_rot_while_stopped_is_caught_by_the_first_hit_after_restart(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    wheel, _ = rot_index(fake_index)
    settings = settings_for(fake_upstream, tmp_path / "cache", cache_scrub_mb_per_minute=0)
    with ProxyServer(settings, clock) as proxy:
        assert fetch_file(proxy, "rotpkg", WHEEL).content == wheel.content
        rotted = flip_a_byte(blob(proxy, wheel))
    # The scrub is off: only the first hit after the start can find the rot.
    with ProxyServer(dataclasses.replace(settings, port=free_port()), clock) as proxy:
        first = fetch_file(proxy, "rotpkg", WHEEL)
        assert first.status_code == 200
        assert first.content == wheel.content
        assert first.headers["X-Wheelfarm-Cache"] == "miss"
        assert fake_index.file_requests[WHEEL] == 2
        assert list(quarantined(proxy).values()) == [rotted]
        assert next(iter(quarantined(proxy))).startswith(wheel.sha256)
        assert blob(proxy, wheel).read_bytes() == wheel.content
        again = fetch_file(proxy, "rotpkg", WHEEL)
        assert again.headers["X-Wheelfarm-Cache"] == "hit"
        assert again.content == wheel.content
        assert fake_index.file_requests[WHEEL] == 2
        assert proxy.metric("wheelfarm_files_quarantined_total") == 1


def test_a_file_without_an_upstream_sha256_is_checked_against_the_digest_recorded_for_it(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    """A provenance document has no sha256 on the page: kept (``[cache] files_without_hash = "cache"``), it
    is stored under a key made from its URL."""
    settings = settings_for(
        fake_upstream, tmp_path / "cache", cache_scrub_mb_per_minute=0, cache_files_without_hash="cache"
    )
    listed = fake_index.file(PROVENANCE_FILE)

    def provenance(proxy: ProxyServer) -> httpx.Response:
        page = httpx.get(f"{proxy.url}/simple/tinypure/?format=json").json()["files"]
        (entry,) = [f for f in page if f["filename"] == PROVENANCE_FILE]
        return httpx.get(str(httpx.URL(f"{proxy.url}/simple/tinypure/").join(entry["url"] + ".provenance")))

    with ProxyServer(settings, clock) as proxy:
        assert provenance(proxy).content == PROVENANCE
        (stored,) = (settings.cache_dir / "files" / "blobs").glob("*/url-*")
        rotted = flip_a_byte(stored)
    with ProxyServer(dataclasses.replace(settings, port=free_port()), clock) as proxy:
        assert provenance(proxy).content == PROVENANCE
        assert fake_index.provenance_requests[listed.filename] == 2
        assert list(quarantined(proxy).values()) == [rotted]
        assert stored.read_bytes() == PROVENANCE


def test_scrub_quarantines_rot_nobody_asked_for(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    wheel, sdist = rot_index(fake_index)
    settings = settings_for(fake_upstream, tmp_path / "cache", cache_scrub_mb_per_minute=0)
    with ProxyServer(settings, clock) as proxy:
        fetch_file(proxy, "rotpkg", WHEEL)
        fetch_file(proxy, "rotpkg", SDIST)
        rotted = flip_a_byte(blob(proxy, wheel))
    scrubbing = dataclasses.replace(settings, port=free_port(), cache_scrub_mb_per_minute=60)
    with ProxyServer(scrubbing, clock) as proxy:
        wait_for(lambda: proxy.metric("wheelfarm_files_quarantined_total") == 1, "the scrub to find the rot")
        assert list(quarantined(proxy).values()) == [rotted]
        assert not blob(proxy, wheel).exists()
        scrubbed = len(rotted) + len(sdist.content)
        wait_for(lambda: (proxy.metric("wheelfarm_scrub_bytes_total") or 0) >= scrubbed, "the whole pass")
        assert blob(proxy, sdist).read_bytes() == sdist.content  # a good blob stays
        assert fetch_file(proxy, "rotpkg", WHEEL).content == wheel.content
        assert fake_index.file_requests[WHEEL] == 2
        assert fake_index.file_requests[SDIST] == 1


def test_verify_action_needs_the_token_and_reports_counts(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    wheel, sdist = rot_index(fake_index)
    with ProxyServer(settings_for(fake_upstream, tmp_path / "cache"), clock) as proxy:
        fetch_file(proxy, "rotpkg", WHEEL)
        fetch_file(proxy, "rotpkg", SDIST)
        rotted = flip_a_byte(blob(proxy, wheel))  # under a running proxy: only a rehash can tell
        endpoint = proxy.url + "/admin/api/verify"
        for header in ({}, {"Authorization": "Bearer wrong"}):
            refused = httpx.post(endpoint, headers=header)
            assert refused.status_code == 401
            assert "token" in refused.text
        assert quarantined(proxy) == {}
        started = httpx.post(endpoint, headers=AUTH)
        assert started.status_code == 202, started.text
        assert started.json()["verify"]["total"] == 2

        def report() -> dict[str, Any]:
            answer: dict[str, Any] = httpx.get(endpoint).json()["verify"]
            return answer

        wait_for(lambda: report()["state"] == "done", "the verify run")
        done = report()
        assert (done["checked"], done["corrupt"], done["missing"], done["unverifiable"]) == (2, 1, 0, 0)
        assert done["quarantined"] == [wheel.sha256]
        assert done["bytes_checked"] == len(rotted) + len(sdist.content)
        assert list(quarantined(proxy).values()) == [rotted]
        summary = httpx.get(proxy.url + "/admin/api/summary").json()["files"]
        assert (summary["count"], summary["quarantined"]) == (1, 1)
        served = fetch_file(proxy, "rotpkg", WHEEL)
        assert served.content == wheel.content
        assert served.headers["X-Wheelfarm-Cache"] == "miss"
        assert fake_index.file_requests[WHEEL] == 2


def test_cache_verify_command(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    wheel, _ = rot_index(fake_index)
    with ProxyServer(settings_for(fake_upstream, tmp_path / "cache"), clock) as proxy:
        fetch_file(proxy, "rotpkg", WHEEL)
        fetch_file(proxy, "rotpkg", SDIST)
        flip_a_byte(blob(proxy, wheel))
        denied = wheelfarm("cache", "verify", *admin_args(proxy, token=None))
        assert denied.code == 2
        assert "token is missing" in denied.stderr
        found = wheelfarm("cache", "verify", "--interval", "0.05", *admin_args(proxy))
        assert found.code == 1, found.output
        assert "checked 2 files" in found.stdout
        assert "1 corrupt" in found.stdout
        assert wheel.sha256 in found.stdout
        clean = wheelfarm("cache", "verify", "--interval", "0.05", "--json", *admin_args(proxy))
        assert clean.code == 0, clean.output
        assert '"corrupt": 0' in clean.stdout
        assert '"checked": 1' in clean.stdout
