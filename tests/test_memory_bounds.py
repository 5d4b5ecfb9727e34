"""Every in-memory map whose keys clients choose is bounded: driven past its bound over HTTP, it stays at
it (the admin summary's "memory" shows what the proxy holds)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import FakeClock, ProxyServer, free_port, proxy_settings

BOUND = 300  # [cache] failures_in_memory, pages_in_memory (rendered_in_memory: twice this)

JSON = "application/vnd.pypi.simple.v1+json"


def _get_all(urls: list[str], accept: str = JSON, concurrency: int = 32) -> list[int]:
    """GET every URL, ``concurrency`` at a time; their statuses."""

    async def run() -> list[int]:
        limit = asyncio.Semaphore(concurrency)
        async with httpx.AsyncClient(timeout=30, headers={"Accept": accept}) as client:

            async def one(url: str) -> int:
                async with limit:
                    return (await client.get(url)).status_code

            return list(await asyncio.gather(*(one(url) for url in urls)))

    return asyncio.run(run())


def _memory(proxy: ProxyServer) -> dict[str, int]:
    memory: dict[str, int] = httpx.get(f"{proxy.url}/admin/api/summary").json()["memory"]
    return memory


def test_upstream_failures_for_names_clients_made_up_stay_bounded(clock: FakeClock, tmp_path: Path) -> None:
    down = f"http://127.0.0.1:{free_port()}/simple/"  # nothing listens: every page fetch fails
    settings = proxy_settings(
        tmp_path / "cache",
        down,
        upstream_connect_timeout=2.0,
        admin_enabled=True,
        cache_failures_in_memory=BOUND,
    )
    with ProxyServer(settings, clock) as proxy:
        names = [f"made-up-{n}" for n in range(BOUND + 200)]
        statuses = _get_all([f"{proxy.url}/simple/{name}/" for name in names])
        assert set(statuses) == {502}
        assert _memory(proxy)["failures"] == BOUND
        # The newest failures are the ones kept: the last name still answers from memory, at once.
        assert httpx.get(f"{proxy.url}/simple/{names[-1]}/").status_code == 502


def test_pages_and_rendered_bodies_stay_bounded(
    fake_upstream: FakeUpstreamServer, fake_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    count = BOUND + 100
    for n in range(count):
        fake_index.add_file(f"many-{n}", FakeFile(f"many_{n}-1.0-py3-none-any.whl", b"wheel"))
    settings = proxy_settings(
        tmp_path / "cache", fake_upstream.simple_url, admin_enabled=True,
        cache_pages_in_memory=BOUND, cache_rendered_in_memory=2 * BOUND - 50,
    )  # fmt: skip
    with ProxyServer(settings, clock) as proxy:
        pages = [f"{proxy.url}/simple/many-{n}/" for n in range(count)]
        assert set(_get_all(pages, JSON)) == {200}
        assert set(_get_all(pages, "text/html")) == {200}  # a second rendering of each
        memory = _memory(proxy)
    assert memory["pages"] == BOUND
    assert memory["rendered"] == 2 * BOUND - 50
