"""Real pip and uv installs through the running proxy, in front of the fake upstream index.

Each install is a subprocess with a clean environment and a fresh target venv (see clients.py), so the
only index a client knows is the proxy: every page and file it gets has gone through wheelfarm.
"""

from __future__ import annotations

import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from clientenv import Client
from clients import InstallResult, each_client, install
from conftest import YANK_REASON
from fake_upstream import FakeIndex
from fakes import ProxyServer

TINYPURE_2_WHEEL = "tinypure-2.0-py3-none-any.whl"
TINYDEP_WHEEL = "tinydep-1.0-py2.py3-none-any.whl"

# What each client prints when it installs a yanked release because it was pinned (PEP 592 allows it).
# pip names the candidate and its URL on one line, then the reason on the next, both on stderr.
PIP_YANK_WARNING = "WARNING: The candidate selected for download or install is a yanked version: 'tinypure'"
PIP_YANK_REASON = f"Reason for being yanked: {YANK_REASON}"
UV_YANK_WARNING = f'warning: `tinypure==1.1` is yanked (reason: "{YANK_REASON}")'

# No client retries, so a failure fails at once: by default pip retries a 502 five times (about 8 s)
# and resumes a cut download five times; uv retries three times (about 10 s).
NO_RETRIES_ARGS = {Client.PIP: ["--retries", "0", "--resume-retries", "0"], Client.UV: []}
NO_RETRIES_ENV = {Client.PIP: {}, Client.UV: {"UV_HTTP_RETRIES": "0"}}


def upstream_counters(index: FakeIndex) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """Copies of what upstream has been asked for so far: pages, files, metadata files."""
    return Counter(index.page_requests), Counter(index.file_requests), Counter(index.metadata_requests)


def wait_for_downloads_to_settle(proxy: ProxyServer, timeout: float = 10.0) -> None:
    """Wait until the proxy has no upstream download in flight (its partial-file folder is empty).

    A client that gives up early leaves the proxy's shared download running; a new request that joined
    it would share its fate, which is right, but not what a test of the next install wants.
    """
    partial = proxy.settings.cache_dir / "files" / "partial"
    deadline = time.monotonic() + timeout
    while any(partial.iterdir()):
        if time.monotonic() > deadline:
            raise AssertionError(f"downloads still in flight after {timeout} s: {sorted(partial.iterdir())}")
        time.sleep(0.02)


def assert_tinydep_works(result: InstallResult) -> None:
    assert result.installed() == {"tinydep": "1.0", "tinypure": "2.0"}
    hello = result.run_python("import tinydep; print(tinydep.hello())")
    assert hello.strip() == "tinydep 1.0 with tinypure 2.0"


@each_client
def test_install_with_a_dependency(
    client: Client, proxy: ProxyServer, fake_index: FakeIndex, tmp_path: Path
) -> None:
    result = install(client, proxy.simple_url, ["tinydep"], tmp_path).check()
    assert_tinydep_works(result)
    assert fake_index.page_requests == Counter({"tinydep": 1, "tinypure": 1})
    # Wheels only (no sdist was needed), each fetched from upstream once, with their PEP 658 metadata.
    assert fake_index.file_requests == Counter({TINYDEP_WHEEL: 1, TINYPURE_2_WHEEL: 1})
    assert fake_index.metadata_requests == Counter({TINYDEP_WHEEL: 1, TINYPURE_2_WHEEL: 1})


@each_client
@pytest.mark.parametrize(
    ("requirement", "version"),
    [("tinypure<2", "1.0"), ("tinypure==1.1", "1.1")],
    ids=["range-skips-yanked", "pin-takes-yanked"],
)
def test_yanked_release(
    client: Client, proxy: ProxyServer, tmp_path: Path, requirement: str, version: str
) -> None:
    result = install(client, proxy.simple_url, [requirement], tmp_path).check()
    assert result.installed() == {"tinypure": version}
    if version != "1.1":
        assert "yanked" not in result.output
    elif client is Client.PIP:
        assert PIP_YANK_WARNING in result.stderr
        assert PIP_YANK_REASON in result.stderr
    else:
        assert UV_YANK_WARNING in result.stderr


@pytest.mark.parametrize(
    ("first", "second"),
    [(Client.PIP, Client.PIP), (Client.UV, Client.UV), (Client.PIP, Client.UV), (Client.UV, Client.PIP)],
    ids=["pip-pip", "uv-uv", "pip-uv", "uv-pip"],
)
def test_warm_cache_needs_no_upstream(
    first: Client, second: Client, proxy: ProxyServer, fake_index: FakeIndex, tmp_path: Path
) -> None:
    install(first, proxy.simple_url, ["tinydep"], tmp_path / "first").check()
    before = upstream_counters(fake_index)
    assert sum(before[1].values()) == 2
    # A fresh venv and no client cache: the second client asks the proxy for everything again.
    again = install(second, proxy.simple_url, ["tinydep"], tmp_path / "second").check()
    assert_tinydep_works(again)
    assert upstream_counters(fake_index) == before  # the page TTL has not passed (the clock is fake)


def test_concurrent_cold_installs_share_one_upstream_fetch_each(
    proxy: ProxyServer, fake_index: FakeIndex, tmp_path: Path
) -> None:
    # Slow pages and files, so the four clients overlap on every request.
    fake_index.page_delay = 0.2
    fake_index.file_chunk = 100
    fake_index.file_delay = 0.05
    clients = [Client.PIP, Client.UV, Client.PIP, Client.UV]

    def run(number: int) -> InstallResult:
        return install(clients[number], proxy.simple_url, ["tinydep"], tmp_path / str(number))

    with ThreadPoolExecutor(len(clients)) as pool:
        results = list(pool.map(run, range(len(clients))))
    for result in results:
        assert_tinydep_works(result.check())
    assert fake_index.page_requests == Counter({"tinydep": 1, "tinypure": 1})
    assert fake_index.file_requests == Counter({TINYDEP_WHEEL: 1, TINYPURE_2_WHEEL: 1})
    assert fake_index.metadata_requests == Counter({TINYDEP_WHEEL: 1, TINYPURE_2_WHEEL: 1})


@each_client
def test_html_only_upstream(
    client: Client, proxy: ProxyServer, fake_index: FakeIndex, tmp_path: Path
) -> None:
    fake_index.html_only = True
    result = install(client, proxy.simple_url, ["tinydep"], tmp_path).check()
    assert_tinydep_works(result)
    # data-core-metadata survived the trip through HTML: the clients read metadata, not wheels, to resolve.
    assert fake_index.metadata_requests == Counter({TINYDEP_WHEEL: 1, TINYPURE_2_WHEEL: 1})


@each_client
@pytest.mark.parametrize("when", ["before-headers", "mid-body"])
def test_corrupt_upstream_file_fails_the_install_and_is_not_cached(
    client: Client, when: str, proxy: ProxyServer, fake_index: FakeIndex, tmp_path: Path
) -> None:
    fake_index.corrupt_files.append(TINYPURE_2_WHEEL)
    if when == "mid-body":
        # Small, slow chunks: the proxy has sent headers and most of the body before the hash is known.
        fake_index.file_chunk = 100
        fake_index.file_delay = 0.02
    failed = install(
        client,
        proxy.simple_url,
        ["tinydep"],
        tmp_path / "corrupt",
        extra_args=NO_RETRIES_ARGS[client],
        extra_env=NO_RETRIES_ENV[client],
    )
    assert failed.returncode != 0, failed.output
    assert failed.installed() == {}
    expected = {
        (Client.PIP, "before-headers"): "too many 502 error responses",
        (Client.PIP, "mid-body"): "error: incomplete-download",
        (Client.UV, "before-headers"): "502 Bad Gateway",
        (Client.UV, "mid-body"): "Failed to download `tinypure==2.0`",
    }[client, when]
    assert expected in failed.stderr
    fake_index.file_delay = 0
    wait_for_downloads_to_settle(proxy)
    downloads = fake_index.file_requests[TINYPURE_2_WHEEL]

    fake_index.corrupt_files.clear()
    fixed = install(client, proxy.simple_url, ["tinydep"], tmp_path / "fixed").check()
    assert_tinydep_works(fixed)
    assert fake_index.file_requests[TINYPURE_2_WHEEL] == downloads + 1  # the bad bytes were never kept


@each_client
def test_machine_configuration_never_reaches_the_clients(
    client: Client, proxy: ProxyServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Were any of these passed on, the install would fail (missing constraints, dead extra index).
    for variable in ("PIP_CONSTRAINT", "UV_CONSTRAINT"):
        monkeypatch.setenv(variable, str(tmp_path / "no-such-constraints.txt"))
    for variable in ("PIP_EXTRA_INDEX_URL", "UV_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "UV_FIND_LINKS"):
        monkeypatch.setenv(variable, "http://127.0.0.1:9/simple/")
    result = install(client, proxy.simple_url, ["tinypure"], tmp_path).check()
    assert result.installed() == {"tinypure": "2.0"}
    assert "127.0.0.1:9/" not in result.output
