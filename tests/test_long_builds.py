"""Long builds: real pip and uv keep waiting for a build of minutes, with the settings the README gives.

pip needs nothing (its six default attempts, with the growing Retry-After, span [builder] max_wait); uv needs
UV_HTTP_RETRIES raised (it ignores Retry-After). Past max_wait, clients are told to come back later.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from buildkit import TARGET, start_builder_proxy
from clientenv import Client
from clients import install
from dists import in_tree_backend_sdist
from fake_upstream import FakeFile, FakeUpstreamServer
from fakes import FakeClock, ProxyServer
from hostile import needs_bwrap

from proxy.builds.waiting import Waiting

pytestmark = needs_bwrap

BUILD_SECONDS = 150


@pytest.fixture
def slow_proxy(fake_upstream: FakeUpstreamServer, clock: FakeClock, tmp_path: Path) -> Iterator[ProxyServer]:
    body = f"    import time\n    time.sleep({BUILD_SECONDS})"
    sdist = in_tree_backend_sdist(tmp_path / "sdists", "slowbuild", "1.0", body)
    fake_upstream.index.add_file("slowbuild", FakeFile.from_path(sdist))
    proxy = start_builder_proxy(fake_upstream, clock, tmp_path / "cache", builder_timeout=600.0)
    yield proxy
    proxy.stop()


@pytest.mark.slow
def test_pip_and_uv_wait_for_a_build_of_minutes(slow_proxy: ProxyServer, tmp_path: Path) -> None:
    settings = slow_proxy.settings
    policy = Waiting(
        settings.builder_hold_seconds, settings.builder_uv_hold_seconds, settings.builder_retry_after,
        settings.builder_max_wait,
    )  # fmt: skip
    uv_env = {"UV_HTTP_RETRIES": str(policy.uv_retries_for())}  # what the README says to set
    with ThreadPoolExecutor(2) as pool:
        pip = pool.submit(
            install, Client.PIP, slow_proxy.simple_url, ["slowbuild"], tmp_path / "pip", timeout=900
        )
        uv = pool.submit(
            install,
            Client.UV,
            slow_proxy.simple_url,
            ["slowbuild"],
            tmp_path / "uv",
            extra_env=uv_env,
            timeout=900,
        )
        results = [pip.result(), uv.result()]

    for result in results:
        result.check()
        assert result.installed()["slowbuild"] == "1.0"
        assert result.duration >= BUILD_SECONDS
        print(f"{result.client.value} waited {result.duration:.0f} s for a {BUILD_SECONDS} s build")
    assert "Building wheel for slowbuild" not in results[0].output  # pip took the farm's wheel


def test_past_max_wait_clients_are_told_to_come_back_later(
    fake_upstream: FakeUpstreamServer, clock: FakeClock, tmp_path: Path
) -> None:
    sdist = in_tree_backend_sdist(
        tmp_path / "sdists", "slowish", "1.0", "    import time\n    time.sleep(20)"
    )
    fake_upstream.index.add_file("slowish", FakeFile.from_path(sdist))
    proxy = start_builder_proxy(
        fake_upstream, clock, tmp_path / "cache", builder_hold_seconds=2.0, builder_max_wait=4.0
    )
    try:
        scope = f"{proxy.url}/t/{TARGET}/simple/slowish/"
        entries = httpx.get(scope + "?format=json", timeout=30).json()["files"]
        (link,) = [
            str(httpx.URL(scope).join(e["url"])) for e in entries if e.get("_wheelfarm", {}).get("pending")
        ]
        first = httpx.get(link, timeout=30)
        time.sleep(2.5)
        started = time.monotonic()
        late = httpx.get(link, timeout=30)
        answered_in = time.monotonic() - started
    finally:
        proxy.stop()

    assert first.status_code == 503
    assert first.headers["Retry-After"] == "5"  # the shortest while the build is young
    assert late.status_code == 503
    assert "Retry-After" not in late.headers
    assert "longer than this proxy keeps clients waiting ([builder] max_wait)" in late.text
    assert answered_in < 1.0  # not held any more
