"""Upstream state flows into built wheels: yank and un-yank, deleted sdists, releases and projects, and
wheels upstream publishes later. The fake upstream changes between requests; the clock is injected, so a
page TTL passes without sleeping."""

from __future__ import annotations

import html
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from buildkit import TARGET, absolute, build_records, files, page, pending_links
from clientenv import Client
from clients import each_client, install
from dists import PROJECTS_DIR, build_project, wheel_metadata
from fake_upstream import FakeFile, FakeIndex
from fakes import FakeClock, ProxyServer

SDIST = "tinypure-3.0.tar.gz"
BUILT = "tinypure-3.0-py2.py3-none-any.whl"


def build_tinypure(proxy: ProxyServer) -> dict[str, Any]:
    (link,) = pending_links(page(proxy, "tinypure"))
    response = httpx.get(absolute(proxy, "tinypure", link["url"]), timeout=60)
    assert response.status_code == 200, response.text
    return files(page(proxy, "tinypure"))[BUILT]


def next_ttl(proxy: ProxyServer, clock: FakeClock) -> None:
    clock.advance(proxy.settings.cache_page_ttl + 1)


def html_anchor(proxy: ProxyServer, filename: str) -> str | None:
    body = httpx.get(f"{proxy.url}/t/{TARGET}/simple/tinypure/", headers={"Accept": "text/html"}).text
    match = re.search(rf"<a ([^>]*)>{re.escape(filename)}</a>", body)
    return match[1] if match else None


def test_yank_and_unyank_follow_upstream_in_every_format(
    builder_proxy: ProxyServer, build_index: FakeIndex, clock: FakeClock
) -> None:
    assert build_tinypure(builder_proxy)["yanked"] is False
    build_index.yank(SDIST, "sdist <broken> & bad")
    assert files(page(builder_proxy, "tinypure"))[BUILT]["yanked"] is False  # within the TTL: cached
    next_ttl(builder_proxy, clock)
    assert files(page(builder_proxy, "tinypure"))[BUILT]["yanked"] == "sdist <broken> & bad"
    anchor = html_anchor(builder_proxy, BUILT)
    assert anchor is not None
    assert f'data-yanked="{html.escape("sdist <broken> & bad")}"' in anchor
    build_index.unyank(SDIST)
    next_ttl(builder_proxy, clock)
    assert files(page(builder_proxy, "tinypure"))[BUILT]["yanked"] is False
    anchor = html_anchor(builder_proxy, BUILT)
    assert anchor is not None
    assert "data-yanked" not in anchor


def test_pending_link_of_a_yanked_sdist_is_yanked(builder_proxy: ProxyServer, build_index: FakeIndex) -> None:
    build_index.yank(SDIST, "do not use")
    (link,) = pending_links(page(builder_proxy, "tinypure"))
    assert link["yanked"] == "do not use"
    anchor = html_anchor(builder_proxy, link["filename"])
    assert anchor is not None
    assert 'data-yanked="do not use"' in anchor


@each_client
def test_clients_skip_a_yanked_built_wheel_unless_pinned(
    builder_proxy: ProxyServer, build_index: FakeIndex, clock: FakeClock, client: Client, tmp_path: Path
) -> None:
    build_tinypure(builder_proxy)
    build_index.yank(SDIST, "sdist was broken")
    next_ttl(builder_proxy, clock)
    unpinned = install(client, builder_proxy.simple_url, ["tinypure"], tmp_path / "unpinned").check()
    assert unpinned.installed()["tinypure"] == "2.0"
    pinned = install(client, builder_proxy.simple_url, ["tinypure==3.0"], tmp_path / "pinned").check()
    assert pinned.installed()["tinypure"] == "3.0"
    assert "yanked" in pinned.output
    assert "sdist was broken" in pinned.output
    assert "Building wheel" not in pinned.output


def test_deleted_sdist_hides_its_built_wheel_and_orphans_it(
    builder_proxy: ProxyServer, build_index: FakeIndex, clock: FakeClock
) -> None:
    built = build_tinypure(builder_proxy)
    wheel_url = absolute(builder_proxy, "tinypure", built["url"])
    sdist = build_index.file(SDIST)
    build_index.remove_file(SDIST)
    next_ttl(builder_proxy, clock)
    listed = files(page(builder_proxy, "tinypure"))
    assert BUILT not in listed
    assert pending_links(page(builder_proxy, "tinypure")) == []
    (record,) = build_records(builder_proxy, "tinypure")
    assert record["orphaned_since"] == clock.now()
    assert httpx.get(wheel_url).status_code == 200  # kept on disk for the retention time
    # The sdist comes back: so does the built wheel.
    build_index.add_file("tinypure", sdist)
    next_ttl(builder_proxy, clock)
    assert BUILT in files(page(builder_proxy, "tinypure"))
    (record,) = build_records(builder_proxy, "tinypure")
    assert record["orphaned_since"] is None
    # Gone again, and past the retention time: deleted at the project's next change upstream.
    build_index.remove_file(SDIST)
    next_ttl(builder_proxy, clock)
    page(builder_proxy, "tinypure")
    clock.advance(builder_proxy.settings.builder_orphan_retention + 1)
    build_index.remove_file("tinypure-1.0.tar.gz")
    next_ttl(builder_proxy, clock)
    page(builder_proxy, "tinypure")
    assert build_records(builder_proxy, "tinypure") == []
    assert httpx.get(wheel_url).status_code == 404
    # Its bytes are gone from the disk too, not only from the index.
    blobs = builder_proxy.settings.cache_dir / "built" / "blobs"
    assert not list(blobs.rglob(built["hashes"]["sha256"]))


@pytest.mark.parametrize("removal", ["release", "project"])
def test_deleted_release_or_project(
    builder_proxy: ProxyServer, build_index: FakeIndex, clock: FakeClock, removal: str
) -> None:
    build_tinypure(builder_proxy)
    if removal == "release":
        for filename in [f.filename for f in build_index.projects["tinypure"] if "-3.0" in f.filename]:
            build_index.remove_file(filename)
    else:
        build_index.remove_project("tinypure")
    next_ttl(builder_proxy, clock)
    response = httpx.get(f"{builder_proxy.url}/t/{TARGET}/simple/tinypure/?format=json")
    if removal == "release":
        assert not [name for name in files(response.json()) if "-3.0" in name]
    else:
        assert response.status_code == 404
    (record,) = build_records(builder_proxy, "tinypure")
    assert record["orphaned_since"] is not None


def test_a_wheel_published_upstream_later_wins(
    builder_proxy: ProxyServer, build_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    build_tinypure(builder_proxy)
    upstream_wheel = build_project(PROJECTS_DIR / "tinypure", "3.0", tmp_path / "late").wheel
    late = FakeFile.from_path(upstream_wheel, metadata=wheel_metadata(upstream_wheel))
    late.filename = "tinypure-3.0-py3-none-any.whl"  # the maintainer's own wheel, under its own name
    build_index.add_file("tinypure", late)
    next_ttl(builder_proxy, clock)
    listed = files(page(builder_proxy, "tinypure"))
    assert late.filename in listed
    assert BUILT not in listed
    assert pending_links(page(builder_proxy, "tinypure")) == []
    result = install(Client.PIP, builder_proxy.simple_url, ["tinypure==3.0"], tmp_path / "pip").check()
    assert result.installed()["tinypure"] == "3.0"
    assert build_index.file_requests[late.filename] == 1  # upstream's wheel, not ours
