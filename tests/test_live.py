"""The proxy in front of the real upstream index (its default), with real pip and uv.

These need the network; `WHEELFARM_SKIP_LIVE=1` skips them all. They pin facts of the real upstream
that the fake one imitates: a project with dependencies resolves, and a yanked release keeps its reason.
"""

from __future__ import annotations

import html
import os
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from clientenv import Client
from clients import each_client, install
from fakes import FakeClock, ProxyServer, proxy_settings

from proxy.settings import Settings

pytestmark = [
    pytest.mark.live,
    pytest.mark.skipif(
        os.environ.get("WHEELFARM_SKIP_LIVE") == "1", reason="WHEELFARM_SKIP_LIVE=1: no real upstream"
    ),
]

JSON = "application/vnd.pypi.simple.v1+json"
HTML = "application/vnd.pypi.simple.v1+html"
YANKED_RELEASE = "requests-2.32.0"  # yanked upstream, with a reason
UPSTREAM_TIMEOUT = 30.0
INSTALL_TIMEOUT = 300.0


@pytest.fixture(scope="module")
def live_proxy(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProxyServer]:
    """wheelfarm with its default upstream and a fresh cache, shared by this module's tests."""
    cache_dir = tmp_path_factory.mktemp("live-cache")
    settings = proxy_settings(
        cache_dir,
        Settings(cache_dir=cache_dir).upstream_url,
        upstream_connect_timeout=UPSTREAM_TIMEOUT,
        upstream_read_timeout=UPSTREAM_TIMEOUT,
        builder_enabled=True,
    )
    with ProxyServer(settings, FakeClock()) as server:
        yield server


@each_client
@pytest.mark.parametrize(
    ("requirement", "expected"),
    [
        ("six", {"six"}),
        ("requests==2.32.3", {"requests", "certifi", "charset-normalizer", "idna", "urllib3"}),
    ],
    ids=["six", "requests"],
)
def test_install_through_the_proxy(
    client: Client, live_proxy: ProxyServer, tmp_path: Path, requirement: str, expected: set[str]
) -> None:
    result = install(client, live_proxy.simple_url, [requirement], tmp_path, timeout=INSTALL_TIMEOUT).check()
    installed = result.installed()
    assert set(installed) == expected
    name, _, version = requirement.partition("==")
    if version:
        assert installed[name] == version
    result.run_python(f"import {name}")


def test_yanked_release_keeps_its_reason_in_json_and_html(live_proxy: ProxyServer) -> None:
    url = live_proxy.simple_url + "requests/"
    page = httpx.get(url, headers={"Accept": JSON}, timeout=60)
    assert page.status_code == 200
    assert page.headers["Content-Type"] == JSON
    files = [entry for entry in page.json()["files"] if _release_of(entry["filename"]) == YANKED_RELEASE]
    assert sorted(entry["filename"] for entry in files) == [
        "requests-2.32.0-py3-none-any.whl",
        "requests-2.32.0.tar.gz",
    ]
    reasons = {entry["yanked"] for entry in files}
    assert len(reasons) == 1
    (reason,) = reasons
    assert isinstance(reason, str)
    assert reason.strip()

    document = httpx.get(url, headers={"Accept": HTML}, timeout=60)
    assert document.status_code == 200
    anchors = {
        html.unescape(text): attributes
        for attributes, text in re.findall(r"<a ([^>]*)>([^<]*)</a>", document.text)
        if _release_of(html.unescape(text)) == YANKED_RELEASE
    }
    assert sorted(anchors) == [entry["filename"] for entry in sorted(files, key=lambda e: e["filename"])]
    for filename, attributes in anchors.items():
        match = re.search(r'data-yanked="([^"]*)"', attributes)
        assert match is not None, f"{filename} is not marked yanked: <a {attributes}>"
        assert html.unescape(match.group(1)) == reason


def _release_of(filename: str) -> str:
    """`requests-2.32.0` for `requests-2.32.0.tar.gz` and `requests-2.32.0-py3-none-any.whl`."""
    stem = filename.removesuffix(".tar.gz").removesuffix(".whl")
    return "-".join(stem.split("-")[:2])


def test_sdist_only_release_is_built_by_the_proxy(live_proxy: ProxyServer, tmp_path: Path) -> None:
    """docopt 0.6.2 is published as an sdist only: pip gets a wheel the proxy built from it."""
    result = install(
        Client.PIP, live_proxy.simple_url, ["docopt==0.6.2", "--only-binary", ":all:"], tmp_path, timeout=600
    ).check()  # --only-binary: the client itself could not have built it
    assert result.installed()["docopt"] == "0.6.2"
    result.run_python("import docopt; assert docopt.docopt('usage: prog [--x]', argv=['--x'])['--x']")
    page = httpx.get(f"{live_proxy.url}/t/cp311-manylinux_2_36_x86_64/simple/docopt/?format=json").json()
    built = [
        f
        for f in page["files"]
        if f["filename"].startswith("docopt-0.6.2-") and f["filename"].endswith(".whl")
    ]
    # The wheel, and its alias under the build-pending link's name (the same file): no pending link left.
    assert len({f["url"] for f in built}) == 1
    assert not any("pending" in f["_wheelfarm"] for f in built)
    assert built[0]["_wheelfarm"]["built-from"] == "docopt-0.6.2.tar.gz"
