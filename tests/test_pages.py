"""Project pages through the running proxy: formats, fields, names, freshness and upstream faults."""

from __future__ import annotations

import gzip
from typing import Any

import httpx
import pytest
from conftest import PROVENANCE_FILE, YANK_REASON
from fake_upstream import FakeIndex, FakeUpstreamServer
from fakes import FakeClock, ProxyServer, proxy_settings

JSON = "application/vnd.pypi.simple.v1+json"
HTML = "application/vnd.pypi.simple.v1+html"
PIP_ACCEPT = f"{JSON}, {HTML}; q=0.1, text/html; q=0.01"


def get(proxy: ProxyServer, path: str, accept: str | None = PIP_ACCEPT, **headers: str) -> httpx.Response:
    if accept is not None:
        headers["Accept"] = accept
    return httpx.get(proxy.url + path, headers=headers, timeout=30)


def files_by_name(page: httpx.Response) -> dict[str, dict[str, Any]]:
    return {entry["filename"]: entry for entry in page.json()["files"]}


def test_json_page_forwards_every_upstream_field(proxy: ProxyServer, fake_index: FakeIndex) -> None:
    response = get(proxy, "/simple/tinypure/")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == JSON
    # No builder here: the page does not depend on the client's User-Agent (test_builds.py checks it does
    # with one).
    assert response.headers["Vary"] == "Accept, Accept-Encoding"
    assert response.headers["X-Wheelfarm-Cache"] == "miss"
    page = response.json()
    assert page["meta"]["api-version"] == "1.4"
    assert page["versions"] == ["1.0", "1.1", "2.0"]
    files = files_by_name(response)
    assert len(files) == 6
    for filename, entry in files.items():
        upstream = fake_index.file(filename)
        assert entry["hashes"] == {"sha256": upstream.sha256}
        assert entry["size"] == len(upstream.content)
        assert entry["upload-time"] == upstream.upload_time
        assert entry["url"] == f"../../files/tinypure/{upstream.sha256}/{filename}"
        assert entry["yanked"] == (YANK_REASON if "-1.1" in filename else False)
        expect_metadata = filename.endswith(".whl")
        # Absent metadata is an absent key, as upstream writes it (test_project_status.py); JSON has only
        # PEP 714's new name (pip 22.3 to 23.1 crash on a "dist-info-metadata" object).
        assert bool(entry.get("core-metadata")) is expect_metadata
        assert "dist-info-metadata" not in entry
    assert files["tinypure-2.0-py3-none-any.whl"]["requires-python"] == ">=3.8"
    provenance = files[PROVENANCE_FILE]["provenance"]
    assert provenance == files[PROVENANCE_FILE]["url"] + ".provenance"
    assert response.headers["X-PyPI-Last-Serial"] == str(fake_index.project_serial("tinypure"))


@pytest.mark.parametrize(
    ("accept", "content_type"), [(HTML, HTML), ("text/html", "text/html"), (None, "text/html")]
)
def test_html_pages_carry_the_same_facts(
    proxy: ProxyServer, fake_index: FakeIndex, accept: str | None, content_type: str
) -> None:
    response = get(proxy, "/simple/tinypure/", accept=accept)
    assert response.status_code == 200
    assert response.headers["Content-Type"].split(";")[0] == content_type
    html = response.text
    yanked = fake_index.file("tinypure-1.1.tar.gz")
    assert f'href="../../files/tinypure/{yanked.sha256}/tinypure-1.1.tar.gz#sha256={yanked.sha256}"' in html
    assert f'data-yanked="{YANK_REASON}"' in html
    assert 'data-requires-python="&gt;=3.8"' in html
    assert "data-core-metadata=" in html
    assert "data-dist-info-metadata=" in html
    assert "data-provenance=" in html


def test_format_query_parameter_and_406(proxy: ProxyServer) -> None:
    assert get(proxy, "/simple/tinypure/?format=json", accept="text/html").headers["Content-Type"] == JSON
    refused = get(proxy, "/simple/tinypure/", accept="application/vnd.pypi.simple.v2+json")
    assert refused.status_code == 406
    assert "application/vnd.pypi.simple.v1+json" in refused.text


@pytest.mark.parametrize(
    "accept",
    [
        "x" * 8000,
        ";;;,,,q=",
        "text/html;q=NaN, */*;q=-1",
        "application/vnd.pypi.simple.v1+json;q=1e400",
        "a/b;;q=0.5,,",
    ],
)
def test_absurd_accept_headers_never_break_the_proxy(proxy: ProxyServer, accept: str) -> None:
    assert get(proxy, "/simple/tinypure/", accept=accept).status_code in (200, 406)
    assert get(proxy, "/healthz").status_code == 200


def test_non_normalised_names_redirect(proxy: ProxyServer) -> None:
    response = get(proxy, "/simple/TinyPure/?format=json")
    assert response.status_code == 301
    assert response.headers["Location"] == "../tinypure/?format=json"
    followed = httpx.get(proxy.url + "/simple/Tiny_Pure/", follow_redirects=True)
    assert followed.status_code == 404  # tiny-pure is another (unknown) project, reached via redirect
    assert get(proxy, "/simple/tinypure").headers["Location"] == "tinypure/"


def test_unknown_project_is_404_and_remembered(
    proxy: ProxyServer, fake_index: FakeIndex, clock: FakeClock
) -> None:
    for _ in range(3):
        response = get(proxy, "/simple/no-such-project/")
        assert response.status_code == 404
        assert "no-such-project" in response.text
    assert fake_index.page_requests["no-such-project"] == 1
    clock.advance(proxy.settings.cache_not_found_ttl + 1)
    assert get(proxy, "/simple/no-such-project/").status_code == 404
    assert fake_index.page_requests["no-such-project"] == 2


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/simple/-bad-/", 400),
        ("/simple/a%20b/", 400),
        ("/simple/..%2F..%2Fetc%2Fpasswd/", 400),
        ("/simple/../../etc/passwd", 404),
        ("/files/tinypure/../../../etc/passwd", 404),
        ("/files/tinypure/%2e%2e/%2e%2e%2fetc%2fpasswd", 404),
        ("/files/tinypure/" + "0" * 64 + "/..%2F..%2Fpasswd", 404),
        ("/files/tinypure/notahash/tinypure-1.0.tar.gz", 404),
        ("/files/Tiny.Pure/" + "0" * 64 + "/x.whl", 404),
    ],
)
def test_malformed_and_traversal_paths_are_refused(proxy: ProxyServer, path: str, status: int) -> None:
    response = httpx.get(proxy.url + path)
    assert response.status_code == status
    assert response.text.strip()


def test_warm_page_is_a_hit_then_revalidated_after_ttl(
    proxy: ProxyServer, fake_index: FakeIndex, clock: FakeClock
) -> None:
    first = get(proxy, "/simple/tinypure/")
    second = get(proxy, "/simple/tinypure/", accept=HTML)
    assert second.headers["X-Wheelfarm-Cache"] == "hit"
    assert fake_index.page_requests["tinypure"] == 1
    clock.advance(proxy.settings.cache_page_ttl + 1)
    third = get(proxy, "/simple/tinypure/")
    assert third.headers["X-Wheelfarm-Cache"] == "revalidated"
    assert fake_index.conditional_hits["tinypure"] == 1
    assert third.content == first.content
    assert get(proxy, "/simple/tinypure/").headers["X-Wheelfarm-Cache"] == "hit"


def test_upstream_changes_show_after_ttl(proxy: ProxyServer, fake_index: FakeIndex, clock: FakeClock) -> None:
    assert files_by_name(get(proxy, "/simple/tinypure/"))["tinypure-1.0.tar.gz"]["yanked"] is False
    fake_index.yank("tinypure-1.0.tar.gz", "bad")
    assert files_by_name(get(proxy, "/simple/tinypure/"))["tinypure-1.0.tar.gz"]["yanked"] is False  # TTL
    clock.advance(proxy.settings.cache_page_ttl + 1)
    refreshed = get(proxy, "/simple/tinypure/")
    assert refreshed.headers["X-Wheelfarm-Cache"] == "miss"
    assert files_by_name(refreshed)["tinypure-1.0.tar.gz"]["yanked"] == "bad"


def test_our_etag_answers_304(proxy: ProxyServer) -> None:
    first = get(proxy, "/simple/tinypure/")
    again = get(proxy, "/simple/tinypure/", **{"If-None-Match": first.headers["ETag"]})
    assert again.status_code == 304
    assert again.headers["ETag"] == first.headers["ETag"]
    html = get(proxy, "/simple/tinypure/", accept="text/html", **{"If-None-Match": first.headers["ETag"]})
    assert html.status_code == 200  # another representation, another validator


@pytest.mark.parametrize("fault", ["status", "timeout"])
def test_stale_if_error(proxy: ProxyServer, fake_index: FakeIndex, clock: FakeClock, fault: str) -> None:
    fresh = get(proxy, "/simple/tinypure/")
    if fault == "status":
        fake_index.page_status["tinypure"] = 503
    else:
        fake_index.page_delay = proxy.settings.upstream_read_timeout + 1
    clock.advance(proxy.settings.cache_page_ttl + 1)
    stale = get(proxy, "/simple/tinypure/")
    assert stale.status_code == 200
    assert stale.content == fresh.content
    assert stale.headers["X-Wheelfarm-Cache"] == "stale"
    assert ("503" if fault == "status" else "timed out") in stale.headers["X-Wheelfarm-Stale-Reason"]
    assert stale.headers["Cache-Control"].startswith("max-age=0")


@pytest.mark.parametrize(
    ("fault", "status", "message"), [("status", 502, "HTTP 500"), ("timeout", 504, "timed out")]
)
def test_upstream_failure_without_cache_names_the_problem(
    proxy: ProxyServer, fake_index: FakeIndex, fault: str, status: int, message: str
) -> None:
    if fault == "status":
        fake_index.page_status["tinypure"] = 500
    else:
        fake_index.page_delay = proxy.settings.upstream_read_timeout + 1
    response = get(proxy, "/simple/tinypure/")
    assert response.status_code == status
    assert message in response.text
    assert "tinypure" in response.text
    fake_index.page_status.clear()
    fake_index.page_delay = 0
    assert get(proxy, "/simple/tinypure/").status_code == 200  # nothing bad was cached


def test_serial_never_goes_backwards(proxy: ProxyServer, fake_index: FakeIndex, clock: FakeClock) -> None:
    first = get(proxy, "/simple/tinypure/")
    serial = int(first.headers["X-PyPI-Last-Serial"])
    fake_index.yank("tinypure-1.0.tar.gz", "from a lagging mirror")
    fake_index.last_serial["tinypure"] = serial - 1
    clock.advance(proxy.settings.cache_page_ttl + 1)
    again = get(proxy, "/simple/tinypure/")
    assert again.headers["X-PyPI-Last-Serial"] == str(serial)
    assert files_by_name(again)["tinypure-1.0.tar.gz"]["yanked"] is False


def test_html_only_upstream_still_gives_json(proxy: ProxyServer, fake_index: FakeIndex) -> None:
    fake_index.html_only = True
    files = files_by_name(get(proxy, "/simple/tinypure/"))
    assert files["tinypure-1.1.tar.gz"]["yanked"] == YANK_REASON
    assert files["tinypure-2.0-py3-none-any.whl"]["requires-python"] == ">=3.8"
    assert files["tinypure-2.0-py3-none-any.whl"]["core-metadata"]


def test_root_list_in_both_formats(proxy: ProxyServer, fake_index: FakeIndex) -> None:
    as_json = get(proxy, "/simple/")
    assert as_json.status_code == 200
    assert as_json.headers["Content-Type"] == JSON
    assert [p["name"] for p in as_json.json()["projects"]] == ["tinydep", "tinypure"]
    as_html = get(proxy, "/simple/", accept="text/html")
    assert '<a href="tinypure/">tinypure</a>' in as_html.text
    assert as_html.headers["X-Wheelfarm-Cache"] == "hit"
    gzipped = httpx.get(proxy.url + "/simple/", headers={"Accept-Encoding": "gzip"})
    assert gzipped.headers.get("Content-Encoding") == "gzip"
    assert gzipped.text == as_html.text


def test_root_list_serves_stale_when_upstream_fails(
    proxy: ProxyServer, fake_index: FakeIndex, clock: FakeClock
) -> None:
    assert get(proxy, "/simple/").status_code == 200
    fake_index.root_status = 503
    clock.advance(proxy.settings.cache_root_ttl + 1)
    stale = get(proxy, "/simple/")
    assert stale.status_code == 200
    assert stale.headers["X-Wheelfarm-Cache"] == "stale"


def test_root_list_failure_without_cache(
    fake_upstream: FakeUpstreamServer, clock: FakeClock, tmp_path: object
) -> None:
    fake_upstream.index.root_status = 500
    from pathlib import Path

    assert isinstance(tmp_path, Path)
    with ProxyServer(proxy_settings(tmp_path / "c", fake_upstream.simple_url), clock) as proxy:
        response = get(proxy, "/simple/")
        assert response.status_code == 502
        assert "HTTP 500" in response.text


def test_pages_come_gzip_compressed_to_clients_that_accept_it(proxy: ProxyServer) -> None:
    url = proxy.url + "/simple/tinypure/?format=json"
    plain = httpx.get(url, headers={"Accept-Encoding": "identity"})
    assert "Content-Encoding" not in plain.headers
    with httpx.stream("GET", url, headers={"Accept-Encoding": "gzip"}) as packed:
        raw = b"".join(packed.iter_raw())
    assert packed.headers["Content-Encoding"] == "gzip"
    assert len(raw) < len(plain.content)
    assert gzip.decompress(raw) == plain.content
    etag = packed.headers["ETag"]
    assert etag != plain.headers["ETag"]  # another representation, another validator
    again = httpx.get(url, headers={"Accept-Encoding": "gzip", "If-None-Match": etag})
    assert again.status_code == 304
