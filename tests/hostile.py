"""Hostile sdists, end to end: what the test_hostile_* modules share.

Every sdist there is written by hand (tests/dists.py); its PEP 517 backend is its own backend.py, so the
hostile code runs ONLY inside the proxy's builder sandbox, never on the test host. Each test asks the real
proxy (one per test session, small limits: the ``farm`` fixture of conftest.py) for a build-pending link
and expects a 422 naming the failed phase and a build log that explains the failure; then it checks, from
the host, that nothing outside the build's work folder changed and that the build left no processes,
cgroups or work folders behind.

- test_hostile_archives.py: sdists whose archive tries to write outside the extraction folder;
- test_hostile_escapes.py: build code that reaches for the network, the host's secrets and files;
- test_hostile_limits.py: build code that exhausts processes, disk and time.
"""

from __future__ import annotations

import io
import re
import shutil
import tarfile
import time
import uuid
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from buildkit import TARGET, WHEELHOUSE
from dists import in_tree_backend_sdist, wheel_metadata
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import FakeClock, ProxyServer, proxy_settings

MIB = 1 << 20
TIMEOUT = 8.0
MAX_FILE_MB = 20
MAX_OUTPUT_MB = 60
MAX_FILES = 20_000
PROCESSES = 64

needs_bwrap = pytest.mark.skipif(shutil.which("bwrap") is None, reason="builds need bubblewrap (bwrap)")


@dataclass(frozen=True)
class Failure:
    """A build that failed, as a client sees it: the 422's phase and error, and the build log."""

    phase: str
    error: str
    log: str
    seconds: float


@dataclass
class Farm:
    """The session's proxy with small builder limits, its fake upstream index, and a folder of its own
    (``base``) holding the proxy's cache and config: the places a hostile build must not reach."""

    proxy: ProxyServer
    index: FakeIndex
    base: Path
    sdists: Path
    published: dict[str, Path] = field(default_factory=dict)

    @property
    def cache(self) -> Path:
        return self.proxy.settings.cache_dir

    @property
    def work(self) -> Path:
        return self.cache / "work"

    @property
    def port(self) -> int:
        return self.proxy.settings.port

    def publish(self, project: str, sdist: Path) -> Path:
        self.index.add_file(project, FakeFile.from_path(sdist))
        self.published[project] = sdist
        return sdist

    def backend_sdist(
        self, project: str, body: str, *, requires: tuple[str, ...] = (), requires_body: str = "    return []"
    ) -> Path:
        """Publish an sdist whose own backend runs ``body`` (indented Python) in ``build_wheel`` and
        ``requires_body`` in ``get_requires_for_build_wheel``; ``requires`` are its static requirements."""
        sdist = in_tree_backend_sdist(
            self.sdists, project, "1.0", body, requires=requires, requires_body=requires_body
        )
        return self.publish(project, sdist)

    def publish_wheel(self, project: str, wheel: Path) -> None:
        self.index.add_file(project, FakeFile.from_path(wheel, metadata=wheel_metadata(wheel)))

    def built_wheel(self, project: str) -> httpx.Response:
        """Ask for the build of ``project``; it must succeed (the wheel is the response's body)."""
        response = self.build(project)
        assert response.status_code == 200, f"{project}: the build failed: {response.text[:2000]}"
        self.assert_work_removed(project)
        return response

    def build_log(self, project: str) -> str:
        """The build log of ``project``'s (finished) build, as the page links it."""
        scope = f"{self.proxy.url}/t/{TARGET}/simple/{project}/"
        entries = httpx.get(scope + "?format=json", timeout=30).json()["files"]
        built = [e for e in entries if "build-log" in e.get("_wheelfarm", {})]
        assert built, f"{project}: the page links no build log: {entries}"
        return httpx.get(str(httpx.URL(scope).join(built[0]["_wheelfarm"]["build-log"])), timeout=30).text

    def pending_url(self, project: str) -> str:
        scope = f"{self.proxy.url}/t/{TARGET}/simple/{project}/"
        response = httpx.get(scope + "?format=json", timeout=30)
        response.raise_for_status()
        entries = [e for e in response.json()["files"] if e.get("_wheelfarm", {}).get("pending")]
        assert len(entries) == 1, f"{project}: expected one build-pending link, got {entries}"
        return str(httpx.URL(scope).join(entries[0]["url"]))

    def build(self, project: str) -> httpx.Response:
        """Ask for the build of ``project`` and wait for its outcome (retrying while it answers 503)."""
        url = self.pending_url(project)
        deadline = time.monotonic() + 120
        while True:
            response = httpx.get(url, timeout=120)
            if response.status_code != 503 or time.monotonic() > deadline:
                return response
            time.sleep(0.3)

    def failed_build(self, project: str) -> Failure:
        started = time.monotonic()
        response = self.build(project)
        seconds = time.monotonic() - started
        shown = response.headers.get("Content-Disposition", "") or response.text[:300]
        assert response.status_code == 422, (
            f"{project}: the hostile build did not fail: {response.status_code} {shown}"
        )
        match = re.fullmatch(r"wheel build failed in (\S+): (.*)\nbuild log: (\S+)\s*", response.text)
        assert match, f"{project}: the 422 names no phase and log: {response.text!r}"
        phase, error, log_url = match.groups()
        assert response.reason_phrase.startswith(f"wheel build failed in {phase}")
        log = httpx.get(log_url, timeout=30)
        assert log.status_code == 200, f"{project}: the build log {log_url} is not served"
        assert f"FAILED in {phase}: " in log.text
        self.assert_work_removed(project)
        return Failure(phase, error, log.text, seconds)

    def assert_work_removed(self, project: str) -> None:
        """The build's work folder (named after its sdist's sha256) is gone; only shared helpers stay."""
        prefix = FakeFile.from_path(self.published[project]).sha256[:16]
        leftovers = sorted(p.name for p in self.work.iterdir() if p.name.startswith(prefix))
        assert leftovers == [], f"{project}: work folders left behind: {leftovers}"
        jobs = sorted(p.name for p in (self.work / "jobs").glob(prefix + "*"))
        assert jobs == [], f"{project}: job files left behind: {jobs}"


@contextmanager
def running_farm(base: Path) -> Iterator[Farm]:
    """A Farm in ``base``: its fake upstream serves the build backends of tests/.wheelhouse."""
    index = FakeIndex()
    for wheel in sorted(WHEELHOUSE.glob("*.whl")):  # setuptools, for the setup.py (legacy backend) case
        index.add_file(wheel.name.split("-")[0], FakeFile.from_path(wheel, metadata=wheel_metadata(wheel)))
    with FakeUpstreamServer(index) as upstream:
        settings = proxy_settings(
            base / "cache",
            upstream.simple_url,
            upstream_read_timeout=30.0,
            builder_enabled=True,
            builder_timeout=TIMEOUT,
            builder_max_file_mb=MAX_FILE_MB,
            builder_max_output_mb=MAX_OUTPUT_MB,
            builder_processes=PROCESSES,
            builder_max_files=MAX_FILES,
            builder_memory_mb=1024,
            builder_workers=2,
            builder_hold_seconds=30.0,
        )
        proxy = ProxyServer(settings, FakeClock()).start()
        try:
            yield Farm(proxy, index, base, base / "sdists")
        finally:
            proxy.stop()


def last_line(log: str, prefix: str) -> str:
    """The rest of the last log line starting with ``prefix`` (an exception's, not the traceback's source)."""
    found = re.findall(rf"^{re.escape(prefix)}(.*)$", log, re.MULTILINE)
    assert found, f"no line starts with {prefix!r} in the build log:\n{log}"
    return str(found[-1])


def marker(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


# --- Archives written member by member --------------------------------------------------------

# The work folder is <cache>/work/<job>/ and sdists are extracted into its src/; so from the sdist's own
# top folder, five '..' reach the folder that holds <cache> (the farm's ``base``).
UP_TO_BASE = "../../../../../"


@dataclass(frozen=True)
class Member:
    name: str  # inside the archive, as given (not under the project folder unless it says so)
    kind: bytes = tarfile.REGTYPE
    linkname: str = ""
    data: bytes = b""


@dataclass(frozen=True)
class EvilArchive:
    members: list[Member]
    refusal: str  # what the build log must say about it
    aimed_at: list[Path]  # host paths that must not appear
    victim: Path | None = None  # a host file that must keep its content


def repack(sdist: Path, extra: list[Member], *, as_zip: bool = False) -> Path:
    """``sdist`` (a hand-written .tar.gz) with ``extra`` members appended, as .tar.gz or .zip."""
    members = []
    with tarfile.open(sdist) as tar:
        for info in tar.getmembers():
            handle = tar.extractfile(info) if info.isfile() else None
            members.append(Member(info.name, info.type, info.linkname, handle.read() if handle else b""))
    sdist.unlink()
    members += extra
    if as_zip:
        path = sdist.with_name(sdist.name.removesuffix(".tar.gz") + ".zip")
        with zipfile.ZipFile(path, "w") as zipped:
            for member in members:
                entry = zipfile.ZipInfo(member.name, date_time=(2023, 11, 14, 22, 13, 20))
                if member.kind == tarfile.SYMTYPE:
                    entry.external_attr = 0o120777 << 16
                    zipped.writestr(entry, member.linkname)
                else:
                    entry.external_attr = 0o100644 << 16
                    zipped.writestr(entry, member.data)
        return path
    with tarfile.open(sdist, "w:gz") as tar:
        for member in members:
            header = tarfile.TarInfo(member.name)
            header.type = member.kind
            header.linkname = member.linkname
            header.size = len(member.data) if member.kind == tarfile.REGTYPE else 0
            header.mode = 0o755 if member.kind == tarfile.DIRTYPE else 0o644
            header.mtime = 1_700_000_000
            tar.addfile(header, io.BytesIO(member.data) if member.kind == tarfile.REGTYPE else None)
    return sdist
