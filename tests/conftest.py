"""Shared fixtures: real dists of the tiny test projects, and a fake upstream index serving them."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from dists import PROJECTS_DIR, BuiltDists, build_project, wheel_metadata
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import FakeClock, ProxyServer, proxy_settings

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
