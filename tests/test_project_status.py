"""Pages as upstream would write them, and PEP 792 project status.

Keys upstream leaves out for a file (no metadata, no provenance) stay out of our pages too: pip 22.3 and 23.0
crash on ``"dist-info-metadata": false``. A project's status (active, archived, deprecated, quarantined)
is forwarded in JSON and HTML; a quarantined project offers no files and gets no builds, even when a careless
upstream still lists files for it.
"""

from __future__ import annotations

from typing import Any

import httpx
from buildkit import TARGET, page
from fake_upstream import FakeIndex
from fakes import ProxyServer

JSON = "application/vnd.pypi.simple.v1+json"


def _json(url: str) -> dict[str, Any]:
    response = httpx.get(url, headers={"Accept": JSON}, timeout=30)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def test_file_entries_carry_exactly_the_keys_upstream_sends(
    proxy: ProxyServer, fake_index: FakeIndex
) -> None:
    upstream = {f["filename"]: f for f in _json(fake_index_url(proxy, "tinypure"))["files"]}
    ours = {f["filename"]: f for f in _json(f"{proxy.url}/simple/tinypure/")["files"]}
    assert ours.keys() == upstream.keys()
    for filename, entry in ours.items():
        assert set(entry) == set(upstream[filename]), filename
    # This index has files without metadata and without provenance: the test compares something.
    assert any("core-metadata" not in entry for entry in ours.values())
    assert any("provenance" not in entry for entry in ours.values())


def fake_index_url(proxy: ProxyServer, project: str) -> str:
    return proxy.settings.upstream_url + f"{project}/"


def test_archived_and_deprecated_projects_are_forwarded_with_their_files(
    proxy: ProxyServer, fake_index: FakeIndex
) -> None:
    fake_index.statuses["tinypure"] = ("archived", "no longer maintained")
    fake_index.statuses["tinydep"] = ("deprecated", None)

    archived = _json(f"{proxy.url}/simple/tinypure/")
    deprecated = _json(f"{proxy.url}/simple/tinydep/")
    html = httpx.get(f"{proxy.url}/simple/tinypure/", headers={"Accept": "text/html"}).text

    assert archived["meta"]["api-version"] == "1.4"
    assert archived["project-status"] == {"status": "archived", "reason": "no longer maintained"}
    assert deprecated["project-status"] == {"status": "deprecated"}
    assert archived["files"]
    assert deprecated["files"]
    assert '<meta name="pypi:project-status" content="archived">' in html
    assert '<meta name="pypi:project-status-reason" content="no longer maintained">' in html


def test_a_quarantined_project_offers_no_files_and_gets_no_builds(
    builder_proxy: ProxyServer, build_index: FakeIndex
) -> None:
    before = page(builder_proxy, "tinypure")
    file_url = next(f["url"] for f in before["files"] if f["filename"] == "tinypure-2.0.tar.gz")
    pending = next(f["url"] for f in before["files"] if f.get("_wheelfarm", {}).get("pending"))
    scope = f"{builder_proxy.url}/t/{TARGET}/simple/tinypure/"
    assert httpx.get(str(httpx.URL(scope).join(file_url))).status_code == 200  # now cached
    build_index.statuses["tinypure"] = ("quarantined", "malware under review")

    builder_proxy.clock.advance(3600)  # past the page TTL: the next request revalidates
    after = page(builder_proxy, "tinypure")
    html = httpx.get(scope, headers={"Accept": "text/html"}).text
    cached_file = httpx.get(str(httpx.URL(scope).join(file_url)))
    build = httpx.get(str(httpx.URL(scope).join(pending)))

    assert after["project-status"] == {"status": "quarantined", "reason": "malware under review"}
    assert after["files"] == []
    assert "tinypure-2.0" not in html
    assert cached_file.status_code == 404
    assert "quarantined upstream (PEP 792)" in cached_file.text
    assert build.status_code == 404
    assert "quarantined upstream (PEP 792)" in build.text
