"""The admin API and /metrics through real HTTP: inspection, token-guarded actions, bad input, limits."""

from __future__ import annotations

import hashlib
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pytest
from buildkit import ADMIN_TOKEN, TARGET, absolute, page, pending_links
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import FakeClock, ProxyServer, free_port, proxy_settings, wait_for
from prometheus_client.parser import text_string_to_metric_families

TOKEN = ADMIN_TOKEN
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def api(proxy: ProxyServer, path: str) -> str:
    return f"{proxy.url}/admin/api/{path}"


def get_json(proxy: ProxyServer, path: str) -> dict[str, Any]:
    response = httpx.get(api(proxy, path), timeout=30)
    assert response.status_code == 200, response.text
    data: dict[str, Any] = response.json()
    return data


def finished_builds(proxy: ProxyServer) -> int:
    counts = get_json(proxy, "builds")["builds"]
    return int(counts["done"] + counts["failed"])


def accepts(port: int) -> bool:
    """Whether something listens on the port (a server starting up)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
    except OSError:
        return False
    return True


def fetch_file(proxy: ProxyServer, project: str, filename: str) -> httpx.Response:
    listed = httpx.get(f"{proxy.url}/simple/{project}/?format=json").json()["files"]
    (entry,) = [f for f in listed if f["filename"] == filename]
    return httpx.get(str(httpx.URL(f"{proxy.url}/simple/{project}/").join(entry["url"])), timeout=60)


def test_admin_is_off_unless_configured(proxy: ProxyServer) -> None:
    assert httpx.get(proxy.url + "/admin/api/summary").status_code == 404
    assert httpx.get(proxy.url + "/admin/").status_code == 404


def test_summary_counts_pages_files_and_outcomes(admin_proxy: ProxyServer) -> None:
    fetch_file(admin_proxy, "tinypure", "tinypure-1.0.tar.gz")
    fetch_file(admin_proxy, "tinypure", "tinypure-1.0.tar.gz")
    summary = get_json(admin_proxy, "summary")
    assert summary["pages"]["count"] == 1
    assert summary["files"]["count"] == 1
    assert summary["files"]["bytes"] > 0
    assert summary["cache"]["miss"] >= 2  # the page and the file's first download
    assert summary["cache"]["hit"] >= 2
    assert 0 < summary["cache"]["hit_ratio"] < 1
    assert summary["builds"] == {"queued": 0, "running": 0, "done": 0, "failed": 0, "orphaned": 0}
    keys = httpx.get(admin_proxy.url + summary["signing"]["keys"], timeout=30).json()
    assert summary["signing"]["keyid"] == keys["current"]


def test_project_view_and_builds_view(admin_proxy: ProxyServer) -> None:
    (link,) = pending_links(page(admin_proxy, "tinypure"))
    assert httpx.get(absolute(admin_proxy, "tinypure", link["url"]), timeout=60).status_code == 200
    view = get_json(admin_proxy, "projects/TinyPure")
    assert view["project"] == "tinypure"
    (build,) = view["builds"][TARGET]
    assert build["state"] == "done"
    assert build["wheel"] == "tinypure-3.0-py2.py3-none-any.whl"
    assert httpx.get(admin_proxy.url + build["log"]).status_code == 200
    assert httpx.get(admin_proxy.url + build["provenance"]).json()["target"] == TARGET
    assert any(f["cached"] and f["filename"] == "tinypure-3.0.tar.gz" for f in view["files"])
    builds = get_json(admin_proxy, "builds")
    assert builds["builds"]["done"] == 1
    assert builds["finished"][0]["duration_seconds"] > 0


@pytest.mark.parametrize(
    ("method", "path", "body"),
    [
        ("POST", "projects/tinypure/purge", {"files": True}),
        ("POST", "evict", {"unused_for_seconds": 0}),
        ("POST", "build-ahead", {"target": TARGET, "requirements": ["tinypure==3.0"]}),
        ("DELETE", f"builds/{'a' * 64}/{TARGET}", None),
    ],
)
@pytest.mark.parametrize("header", [None, "Bearer wrong", f"Basic {TOKEN}", TOKEN])
def test_changes_need_the_token_and_change_nothing_without_it(
    admin_proxy: ProxyServer,
    fake_index: FakeIndex,
    method: str,
    path: str,
    body: dict[str, Any] | None,
    header: str | None,
) -> None:
    fetch_file(admin_proxy, "tinypure", "tinypure-1.0.tar.gz")
    before = get_json(admin_proxy, "summary")
    headers = {"Authorization": header} if header else {}
    response = httpx.request(method, api(admin_proxy, path), json=body, headers=headers)
    assert response.status_code == 401
    assert "token" in response.text
    after = get_json(admin_proxy, "summary")
    assert after["files"] == before["files"]
    assert after["pages"] == before["pages"]
    assert after["builds"] == before["builds"]


def test_no_token_configured_means_no_changes(
    fake_upstream: FakeUpstreamServer, clock: FakeClock, tmp_path: Path
) -> None:
    settings = proxy_settings(tmp_path / "c", fake_upstream.simple_url, admin_enabled=True)
    with ProxyServer(settings, clock) as proxy:
        response = httpx.post(api(proxy, "evict"), json={"unused_for_seconds": 0}, headers=AUTH)
        assert response.status_code == 401
        assert "[admin] token" in response.text


@pytest.mark.parametrize(
    ("path", "body", "message"),
    [
        ("build-ahead", b"{not json", "not valid JSON"),
        ("build-ahead", b"[1, 2]", "JSON object"),
        ("build-ahead", b'{"requirements": ["tinypure==3.0"]}', "'target'"),
        ("build-ahead", b'{"target": "cp311-windows", "requirements": ["x"]}', "'target'"),
        (
            "build-ahead",
            f'{{"target": "{TARGET}", "requirements": ["tiny pure ==="]}}'.encode(),
            "'requirements'",
        ),
        ("build-ahead", f'{{"target": "{TARGET}", "requirements": 7}}'.encode(), "'requirements'"),
        ("build-ahead", f'{{"target": "{TARGET}"}}'.encode(), "names nothing"),
        ("evict", b'{"unused_for_seconds": "old"}', "'unused_for_seconds'"),
        ("projects/tinypure/purge", b'{"files": "yes"}', "'files'"),
    ],
)
def test_bad_bodies_are_400_naming_the_field(
    admin_proxy: ProxyServer, path: str, body: bytes, message: str
) -> None:
    response = httpx.post(api(admin_proxy, path), content=body, headers=AUTH)
    assert response.status_code == 400
    assert message in response.text


def test_unknown_things_are_404_with_a_message(admin_proxy: ProxyServer) -> None:
    missing = httpx.get(api(admin_proxy, "projects/no-such-project"))
    assert missing.status_code == 404
    assert "no-such-project" in missing.text
    build = httpx.delete(api(admin_proxy, f"builds/{'b' * 64}/{TARGET}"), headers=AUTH)
    assert build.status_code == 404
    assert "no build" in build.text
    retry = httpx.post(api(admin_proxy, f"builds/{'b' * 64}/{TARGET}/retry"), headers=AUTH)
    assert retry.status_code == 404
    assert httpx.post(api(admin_proxy, f"builds/{'z' * 64}/{TARGET}/retry"), headers=AUTH).status_code == 400


def test_purge_page_and_project(admin_proxy: ProxyServer, fake_index: FakeIndex) -> None:
    fetch_file(admin_proxy, "tinypure", "tinypure-1.0.tar.gz")
    pages_before = fake_index.page_requests["tinypure"]
    purged = httpx.post(api(admin_proxy, "projects/tinypure/purge"), headers=AUTH).json()
    assert purged["removed"] == {"page": True, "files": 0, "builds": 0}
    assert httpx.get(admin_proxy.url + "/simple/tinypure/").headers["X-Wheelfarm-Cache"] == "miss"
    assert fake_index.page_requests["tinypure"] == pages_before + 1
    purged = httpx.post(
        api(admin_proxy, "projects/tinypure/purge"), json={"files": True}, headers=AUTH
    ).json()
    assert purged["removed"]["files"] == 1
    assert get_json(admin_proxy, "summary")["files"]["count"] == 0
    assert fetch_file(admin_proxy, "tinypure", "tinypure-1.0.tar.gz").status_code == 200
    assert fake_index.file_requests["tinypure-1.0.tar.gz"] == 2


def test_build_ahead_retry_and_delete(admin_proxy: ProxyServer) -> None:
    started = httpx.post(
        api(admin_proxy, "build-ahead"),
        json={
            "target": TARGET,
            "requirements": ["no-such-project==1.0"],
            "requirements_txt": "tinypure==3.0  # pinned\nbrokenpkg\n-r other.txt\n",
        },
        headers=AUTH,
    )
    assert started.status_code == 202
    states = {b["requirement"]: b["state"] for b in started.json()["builds"]}
    assert states == {
        "no-such-project==1.0": "no such project upstream",
        "tinypure==3.0": "started",
        "brokenpkg": "started",
    }
    wait_for(lambda: finished_builds(admin_proxy) == 2, "both builds to finish", seconds=60)
    counts = get_json(admin_proxy, "builds")["builds"]
    assert counts["done"] == 1
    assert counts["failed"] == 1
    (failed,) = [b for b in get_json(admin_proxy, "builds")["finished"] if b["state"] == "failed"]
    assert "no compiler for you" in httpx.get(admin_proxy.url + failed["log"]).text
    assert pending_links(page(admin_proxy, "brokenpkg")) == []
    key = failed["key"]
    retried = httpx.post(
        api(admin_proxy, f"builds/{key['sdist_sha256']}/{key['target']}/retry"), headers=AUTH
    )
    assert retried.status_code == 200
    assert len(pending_links(page(admin_proxy, "brokenpkg"))) == 1
    (done,) = get_json(admin_proxy, "builds")["finished"]
    key = done["key"]
    not_failed = httpx.post(
        api(admin_proxy, f"builds/{key['sdist_sha256']}/{key['target']}/retry"), headers=AUTH
    )
    assert not_failed.status_code == 400
    deleted = httpx.delete(api(admin_proxy, f"builds/{key['sdist_sha256']}/{key['target']}"), headers=AUTH)
    assert deleted.status_code == 200
    assert len(pending_links(page(admin_proxy, "tinypure"))) == 1


def test_purge_while_a_file_streams_leaves_nothing_corrupt(
    admin_proxy: ProxyServer, fake_index: FakeIndex
) -> None:
    content = os.urandom(2 * 1024 * 1024)
    fake_index.add_file("bigpkg", FakeFile("bigpkg-1.0.tar.gz", content))
    fake_index.file_chunk = 64 * 1024
    fake_index.file_delay = 0.03
    result: dict[str, bytes] = {}

    def download() -> None:
        result["body"] = fetch_file(admin_proxy, "bigpkg", "bigpkg-1.0.tar.gz").content

    thread = threading.Thread(target=download)
    thread.start()
    wait_for(lambda: fake_index.file_requests["bigpkg-1.0.tar.gz"] == 1, "the download to start")
    purged = httpx.post(api(admin_proxy, "projects/bigpkg/purge"), json={"files": True}, headers=AUTH)
    assert purged.status_code == 200
    thread.join(30)
    assert hashlib.sha256(result["body"]).hexdigest() == hashlib.sha256(content).hexdigest()
    blob = admin_proxy.settings.cache_dir / "files" / "blobs"
    for path in blob.rglob("*"):
        if path.is_file():
            assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name


def test_file_store_limit_evicts_least_recently_used(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    blobs = {name: os.urandom(400 * 1024) for name in ("a", "b", "c")}
    for name, content in blobs.items():
        fake_index.add_file(f"pkg-{name}", FakeFile(f"pkg_{name}-1.0.tar.gz", content))
    settings = proxy_settings(
        tmp_path / "c", fake_upstream.simple_url, cache_max_file_mb=1, admin_enabled=True, admin_token=TOKEN
    )
    with ProxyServer(settings, clock) as proxy:
        for name in ("a", "b"):
            assert fetch_file(proxy, f"pkg-{name}", f"pkg_{name}-1.0.tar.gz").content == blobs[name]
            clock.advance(1)
        fetch_file(proxy, "pkg-a", "pkg_a-1.0.tar.gz")  # a is now more recent than b
        clock.advance(1)
        assert fetch_file(proxy, "pkg-c", "pkg_c-1.0.tar.gz").content == blobs["c"]
        summary = get_json(proxy, "summary")["files"]
        assert summary["count"] == 2
        assert summary["bytes"] <= 1024 * 1024
        assert summary["evictions"] == 1
        fetch_file(proxy, "pkg-a", "pkg_a-1.0.tar.gz")
        assert fake_index.file_requests["pkg_a-1.0.tar.gz"] == 1  # kept
        fetch_file(proxy, "pkg-b", "pkg_b-1.0.tar.gz")
        assert fake_index.file_requests["pkg_b-1.0.tar.gz"] == 2  # evicted, downloaded again
        clock.advance(3600)
        evicted = httpx.post(api(proxy, "evict"), json={"unused_for_seconds": 1800}, headers=AUTH).json()
        assert evicted == {"evicted_files": 2}


def test_metrics_names_and_counts(admin_proxy: ProxyServer) -> None:
    fetch_file(admin_proxy, "tinypure", "tinypure-1.0.tar.gz")
    text = httpx.get(admin_proxy.url + "/metrics").text
    for name in (
        "wheelfarm_requests_total",
        "wheelfarm_cache_outcomes_total",
        "wheelfarm_bytes_served_total",
        "wheelfarm_upstream_request_seconds_bucket",
        "wheelfarm_builds_total",
        "wheelfarm_build_duration_seconds_bucket",
        "wheelfarm_build_queue_depth",
        "wheelfarm_build_queue_seconds_bucket",
        "wheelfarm_builds_running",
    ):
        assert name in text, name
    assert 'wheelfarm_requests_total{route="/simple/{project}/",status="200"} 1.0' in text
    assert 'wheelfarm_cache_outcomes_total{outcome="miss"}' in text
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }
    files_route = (("route", "/files/{project}/{key}/{filename}"),)
    assert samples["wheelfarm_request_duration_seconds_count", files_route] == 1
    assert samples["wheelfarm_request_duration_seconds_bucket", (("le", "+Inf"), *files_route)] == 1
    assert samples["wheelfarm_request_duration_seconds_sum", files_route] > 0
    assert samples["wheelfarm_cache_entries", (("store", "files"),)] == 1
    assert samples["wheelfarm_cache_bytes", (("store", "files"),)] > 0
    assert samples["wheelfarm_cache_evictions_total", (("store", "files"),)] == 0
    assert ("wheelfarm_cache_bytes", (("store", "built"),)) in samples
    assert ("wheelfarm_cache_bytes", (("store", "pages"),)) in samples


def test_admin_on_its_own_listener(fake_upstream: FakeUpstreamServer, tmp_path: Path) -> None:
    port, admin_port = free_port(), free_port()
    env = {**os.environ, "WHEELFARM_ADMIN_TOKEN": TOKEN}
    process = subprocess.Popen(
        [str(Path(sys.executable).parent / "wheelfarm"), "serve", "--port", str(port), "--cache-dir",
         str(tmp_path / "c"), "--upstream", fake_upstream.simple_url, "--admin-enabled", "true",
         "--admin-listen", f"127.0.0.1:{admin_port}"],
        env=env, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        wait_for(lambda: accepts(port) and accepts(admin_port), "both listeners", seconds=10)
        assert httpx.get(f"http://127.0.0.1:{admin_port}/api/summary").status_code == 200
        assert httpx.get(f"http://127.0.0.1:{port}/admin/api/summary").status_code == 404
        denied = httpx.post(f"http://127.0.0.1:{admin_port}/api/evict", json={"unused_for_seconds": 0})
        assert denied.status_code == 401
        allowed = httpx.post(
            f"http://127.0.0.1:{admin_port}/api/evict", json={"unused_for_seconds": 0}, headers=AUTH
        )
        assert allowed.status_code == 200
    finally:
        process.terminate()
        process.wait(10)


def test_eviction_while_clients_download_never_breaks_a_download(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    """A 1 MiB store: while a slow 700 KiB download streams to two clients, other files push the store past
    its limit again and again; the streaming file is never evicted, every client gets whole, right bytes,
    and what stays on disk is intact and within the limit."""
    slow = os.urandom(700 * 1024)
    fake_index.add_file("slowfile", FakeFile("slowfile-1.0.tar.gz", slow))
    others = {f"pkg-{n}": os.urandom(300 * 1024) for n in range(6)}
    for project, content in others.items():
        fake_index.add_file(project, FakeFile(f"{project.replace('-', '_')}-1.0.tar.gz", content))
    settings = proxy_settings(tmp_path / "c", fake_upstream.simple_url, cache_max_file_mb=1)
    with ProxyServer(settings, clock) as proxy:
        fake_index.file_chunk = 32 * 1024
        fake_index.file_delay = 0.05  # about 1 s for the slow file, 0.5 s for each other one
        results: list[bytes] = []
        readers = [
            threading.Thread(
                target=lambda: results.append(fetch_file(proxy, "slowfile", "slowfile-1.0.tar.gz").content)
            )
            for _ in range(2)
        ]
        for reader in readers:
            reader.start()
        wait_for(lambda: fake_index.file_requests["slowfile-1.0.tar.gz"] == 1, "the slow download to start")
        for project, content in others.items():
            clock.advance(1)
            assert fetch_file(proxy, project, f"{project.replace('-', '_')}-1.0.tar.gz").content == content
        for reader in readers:
            reader.join(30)
        assert results == [slow, slow]
        evictions = proxy.metric("wheelfarm_cache_evictions_total", store="files")
        assert (evictions or 0) >= 1
        # A download's eviction pass runs once it is published, while its last bytes already go out: the
        # client can finish a moment before the store is back within its limit.
        wait_for(
            lambda: (proxy.metric("wheelfarm_cache_bytes", store="files") or 0) <= 1024 * 1024,
            "the store back within its limit",
            seconds=5,
        )
        for path in (settings.cache_dir / "files" / "blobs").rglob("*"):
            if path.is_file():
                assert hashlib.sha256(path.read_bytes()).hexdigest() == path.name
