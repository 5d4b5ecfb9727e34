"""Shared fixtures: real dists of the tiny test projects, a fake upstream index serving them, proxies."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from buildkit import ADMIN_TOKEN, WHEELHOUSE, start_builder_proxy
from dists import PROJECTS_DIR, BuiltDists, build_project, build_sdist, in_tree_backend_sdist, wheel_metadata
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import FakeClock, ProxyServer, proxy_settings
from hostile import Farm, running_farm
from pgserver import PostgresServer

# (project, version, requires-python) of every release the session builds.
RELEASES: list[tuple[str, str, str | None]] = [
    ("tinypure", "1.0", None),
    ("tinypure", "1.1", None),  # the fake_index fixture yanks it
    ("tinypure", "2.0", ">=3.8"),
    ("tinydep", "1.0", None),
]
YANK_REASON = "broken build"
# The one file the fake_index fixture gives a PEP 740 provenance document.
PROVENANCE_FILE = "tinypure-2.0-py3-none-any.whl"
PROVENANCE = json.dumps({"version": 1, "attestation_bundles": []}).encode()


@pytest.fixture(scope="session")
def built_dists(tmp_path_factory: pytest.TempPathFactory) -> BuiltDists:
    """(project, version) -> BuiltProject for each of RELEASES, built once per test session."""
    out_dir = tmp_path_factory.mktemp("dists")
    return {
        (project, version): build_project(PROJECTS_DIR / project, version, out_dir, requires_python=rp)
        for project, version, rp in RELEASES
    }


@pytest.fixture
def fake_index(built_dists: BuiltDists) -> FakeIndex:
    """A fresh index of RELEASES: wheels with PEP 658 metadata, sdists without; tinypure 1.1 yanked."""
    index = FakeIndex()
    requires = {(project, version): rp for project, version, rp in RELEASES}
    for (project, version), built in built_dists.items():
        rp = requires[project, version]
        index.add_file(project, FakeFile.from_path(built.sdist, requires_python=rp))
        wheel = FakeFile.from_path(built.wheel, requires_python=rp, metadata=wheel_metadata(built.wheel))
        if wheel.filename == PROVENANCE_FILE:
            wheel.provenance = PROVENANCE
        index.add_file(project, wheel)
    index.yank_release("tinypure", "1.1", YANK_REASON)
    return index


@pytest.fixture
def fake_upstream(fake_index: FakeIndex) -> Iterator[FakeUpstreamServer]:
    """The fake_index served on 127.0.0.1; `fake_upstream.index` is the same object as fake_index."""
    with FakeUpstreamServer(fake_index) as server:
        yield server


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def proxy(fake_upstream: FakeUpstreamServer, clock: FakeClock, tmp_path: Path) -> Iterator[ProxyServer]:
    """wheelfarm in front of the fake upstream, with a fresh cache and the injected clock."""
    settings = proxy_settings(tmp_path / "cache", fake_upstream.simple_url)
    with ProxyServer(settings, clock) as server:
        yield server


@pytest.fixture(scope="session")
def sdists(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """sdist-only releases the proxy must build: pure, native, failing and slow."""
    out = tmp_path_factory.mktemp("sdists")
    return {
        "tinypure": build_sdist(PROJECTS_DIR / "tinypure", "3.0", out),
        "tinynative": build_sdist(PROJECTS_DIR / "tinynative", "1.0", out),
        "brokenpkg": in_tree_backend_sdist(
            out, "brokenpkg", "1.0", '    raise RuntimeError("no compiler for you")'
        ),
        "slowpkg": in_tree_backend_sdist(out, "slowpkg", "1.0", "    import time\n    time.sleep(3)"),
    }


@pytest.fixture
def build_index(fake_index: FakeIndex, sdists: dict[str, Path]) -> FakeIndex:
    """The shared test index plus sdist-only releases, and the build backends builds need (as wheels)."""
    assert sorted(p.name for p in WHEELHOUSE.glob("*.whl")), "run `make test` (it downloads the backends)"
    for wheel in sorted(WHEELHOUSE.glob("*.whl")):
        project = wheel.name.split("-")[0]
        fake_index.add_file(project, FakeFile.from_path(wheel, metadata=wheel_metadata(wheel)))
    for project, sdist in sdists.items():
        fake_index.add_file(project, FakeFile.from_path(sdist))
    return fake_index


@pytest.fixture
def builder_proxy(
    fake_upstream: FakeUpstreamServer, build_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> Iterator[ProxyServer]:
    """wheelfarm with its builder pool, in front of build_index."""
    proxy = start_builder_proxy(fake_upstream, clock, tmp_path / "cache")
    yield proxy
    proxy.stop()


@pytest.fixture
def admin_proxy(
    fake_upstream: FakeUpstreamServer, build_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> Iterator[ProxyServer]:
    """builder_proxy with the admin app enabled (token buildkit.ADMIN_TOKEN)."""
    proxy = start_builder_proxy(
        fake_upstream, clock, tmp_path / "cache", admin_enabled=True, admin_token=ADMIN_TOKEN
    )
    yield proxy
    proxy.stop()


@pytest.fixture(scope="session")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    """The proxy of the test_hostile_* modules (tests/hostile.py), started once for all three: each test
    publishes sdists under names of its own and leaves its build's work folder removed, so none needs a
    fresh one."""
    with running_farm(tmp_path_factory.mktemp("hostile")) as started:
        yield started


@pytest.fixture(scope="module")
def postgres() -> Iterator[PostgresServer]:
    server = PostgresServer()
    server.init()
    yield server
    server.close()


@pytest.fixture
def database(postgres: PostgresServer) -> str:
    """A database of its own for each test, on the module's server."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(postgres.url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    return postgres.url.rsplit("/", 1)[0] + "/" + name
