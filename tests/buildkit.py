"""Helpers for tests of builds: the target they use, a proxy with builders, pages as JSON, absolute links."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import httpx
from fake_upstream import FakeUpstreamServer
from fakes import FakeClock, ProxyServer, proxy_settings

WHEELHOUSE = Path(__file__).resolve().parent / ".wheelhouse"  # build backends, downloaded by `make test`
TARGET = "cp311-manylinux_2_36_x86_64"
ADMIN_TOKEN = "s3cret-t0ken"
PIP_UA = (
    'pip/26.3 {"cpu":"x86_64","distro":{"id":"bookworm","libc":{"lib":"glibc","version":"2.36"},'
    '"name":"Debian GNU/Linux","version":"12"},"implementation":{"name":"CPython","version":"3.11.7"},'
    '"python":"3.11.7","system":{"name":"Linux","release":"6.1.0"}}'
)


def start_builder_proxy(
    upstream: FakeUpstreamServer, clock: FakeClock, cache: Path, **changes: Any
) -> ProxyServer:
    settings = proxy_settings(
        cache,
        upstream.simple_url,
        **{
            "upstream_read_timeout": 30.0,
            "builder_enabled": True,
            "builder_timeout": 120.0,
            "admin_enabled": True,  # the tests read and change builds through the admin API, as operators do
            "admin_token": ADMIN_TOKEN,
            **changes,
        },
    )
    return ProxyServer(settings, clock).start()


def build_records(proxy: ProxyServer, project: str | None = None) -> list[dict[str, Any]]:
    """Finished builds (of ``project``) as the admin API lists them."""
    response = httpx.get(f"{proxy.url}/admin/api/builds", timeout=30)
    response.raise_for_status()
    finished: list[dict[str, Any]] = response.json()["finished"]
    return [record for record in finished if project is None or record["project"] == project]


def active_builds(proxy: ProxyServer) -> list[dict[str, Any]]:
    """Builds queued or running, as the admin API lists them."""
    response = httpx.get(f"{proxy.url}/admin/api/builds", timeout=30)
    response.raise_for_status()
    active: list[dict[str, Any]] = response.json()["active"]
    return active


def delete_build(proxy: ProxyServer, sdist_sha256: str, target: str) -> bool:
    """Delete a build through the admin API (so it runs again); whether there was one."""
    response = httpx.delete(
        f"{proxy.url}/admin/api/builds/{sdist_sha256}/{target}",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        timeout=30,
    )
    if response.status_code == 404:
        return False
    response.raise_for_status()
    return True


class Served(Protocol):
    """A running wheelfarm: in this process (ProxyServer) or a `wheelfarm serve` (serve.RunningServer)."""

    @property
    def url(self) -> str: ...


def page(proxy: Served, project: str, scope: str = f"/t/{TARGET}", **headers: str) -> dict[str, Any]:
    response = httpx.get(f"{proxy.url}{scope}/simple/{project}/?format=json", headers=headers, timeout=30)
    response.raise_for_status()
    data: dict[str, Any] = response.json()
    return data


def files(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {entry["filename"]: entry for entry in data["files"]}


def pending_links(data: dict[str, Any]) -> list[dict[str, Any]]:
    return [entry for entry in data["files"] if entry.get("_wheelfarm", {}).get("pending")]


def absolute(proxy: Served, project: str, url: str, scope: str = f"/t/{TARGET}") -> str:
    return str(httpx.URL(f"{proxy.url}{scope}/simple/{project}/").join(url))
