"""Hostile sdists, end to end: each fails its own build with a clear log and touches nothing else.

Every sdist here is written by hand (tests/dists.py); its PEP 517 backend is its own backend.py, so the
hostile code runs ONLY inside the proxy's builder sandbox, never on the test host. Each test asks the real
proxy (one per module, small limits) for a build-pending link and expects a 422 naming the failed phase and
a build log that explains the failure; then it checks, from the host, that nothing outside the build's work
folder changed and that the build left no processes, cgroups or work folders behind.
"""

from __future__ import annotations

import io
import json
import os
import re
import shutil
import subprocess
import tarfile
import time
import uuid
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from dists import in_tree_backend_sdist, make_sdist, wheel_metadata
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import FakeClock, ProxyServer, proxy_settings

from builder.sandbox import pids_limit_available

TARGET = "cp311-manylinux_2_36_x86_64"
WHEELHOUSE = Path(__file__).resolve().parent / ".wheelhouse"
MIB = 1 << 20
TIMEOUT = 8.0
MAX_FILE_MB = 20
MAX_OUTPUT_MB = 60
PROCESSES = 64

pytestmark = pytest.mark.skipif(shutil.which("bwrap") is None, reason="builds need bubblewrap (bwrap)")


@dataclass(frozen=True)
class Failure:
    """A build that failed, as a client sees it: the 422's phase and error, and the build log."""

    phase: str
    error: str
    log: str
    seconds: float


@dataclass
class Farm:
    """The module's proxy with small builder limits, its fake upstream index, and a folder of its own
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

    def backend_sdist(self, project: str, body: str) -> Path:
        """Publish an sdist whose own backend runs ``body`` (indented Python) in ``build_wheel``."""
        return self.publish(project, in_tree_backend_sdist(self.sdists, project, "1.0", body))

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


@pytest.fixture(scope="module")
def farm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Farm]:
    base = tmp_path_factory.mktemp("hostile")
    index = FakeIndex()
    for wheel in sorted(WHEELHOUSE.glob("*.whl")):  # setuptools, for the setup.py (legacy backend) case
        index.add_file(wheel.name.split("-")[0], FakeFile.from_path(wheel, metadata=wheel_metadata(wheel)))
    with FakeUpstreamServer(index) as upstream:
        settings = proxy_settings(
            base / "cache",
            upstream.simple_url,
            upstream_read_timeout=30.0,
            builder_timeout=TIMEOUT,
            builder_max_file_mb=MAX_FILE_MB,
            builder_max_output_mb=MAX_OUTPUT_MB,
            builder_processes=PROCESSES,
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


# --- Archives that try to escape extraction ---------------------------------------------------------

# The work folder is <cache>/work/<job>/ and sdists are extracted into its src/; so from the sdist's own
# top folder, five '..' reach the folder that holds <cache> (the module's ``base``).
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


def _dotdot(root: str, base: Path) -> EvilArchive:
    name = marker("dotdot")
    return EvilArchive(
        [Member(f"{root}/{UP_TO_BASE}{name}", data=b"pwned")], "climbs out with '..'", [base / name]
    )


def _absolute(root: str, base: Path) -> EvilArchive:
    aimed = base / marker("absolute")
    return EvilArchive([Member(str(aimed), data=b"pwned")], "has an absolute path", [aimed])


def _symlink_absolute(root: str, base: Path) -> EvilArchive:
    # A link to a host file, then a regular member of the same name: written through, it would overwrite it.
    victim = base / marker("victim")
    members = [Member(f"{root}/link", tarfile.SYMTYPE, str(victim)), Member(f"{root}/link", data=b"pwned")]
    return EvilArchive(members, "points outside the sdist", [], victim)


def _symlink_etc_passwd(root: str, base: Path) -> EvilArchive:
    return EvilArchive(
        [Member(f"{root}/link", tarfile.SYMTYPE, "/etc/passwd")], "points outside the sdist", []
    )


def _symlink_dotdot(root: str, base: Path) -> EvilArchive:
    victim = base / marker("victim")
    members = [
        Member(f"{root}/up", tarfile.SYMTYPE, UP_TO_BASE + victim.name),
        Member(f"{root}/up", data=b"pwned"),
    ]
    return EvilArchive(members, "points outside the sdist", [], victim)


def _symlinked_folder(root: str, base: Path) -> EvilArchive:
    # A link to a folder outside, then a member "inside" the link.
    name = marker("through-link")
    members = [
        Member(f"{root}/out", tarfile.SYMTYPE, UP_TO_BASE),
        Member(f"{root}/out/{name}", data=b"pwned"),
    ]
    return EvilArchive(members, "points outside the sdist", [base / name])


def _symlink_chain(root: str, base: Path) -> EvilArchive:
    # 'd' -> '.' makes "d/d/d/d/../../../../.." look like the project folder to a lexical check, while the
    # file system resolves it to five folders up (``base``).
    name = marker("chain")
    members = [
        Member(f"{root}/d", tarfile.SYMTYPE, "."),
        Member(f"{root}/esc", tarfile.SYMTYPE, "d/d/d/d/" + UP_TO_BASE.removesuffix("/")),
        Member(f"{root}/esc/{name}", data=b"pwned"),
    ]
    return EvilArchive(members, "points outside the sdist", [base / name])


def _symlink_chain_past_path_max(root: str, base: Path) -> EvilArchive:
    # CVE-2025-4517's pattern: links through folders whose real path exceeds PATH_MAX, so that
    # os.path.realpath (tarfile's "data" filter, before Python 3.11.13) stops resolving and goes on
    # lexically; the lexical check of builder/extract.py is fooled the same way.
    name = marker("past-path-max")
    long = "d" * 250
    members: list[Member] = []
    path = root
    for letter in "abcdefghijklmnopqrst":
        members.append(Member(f"{path}/{long}", tarfile.DIRTYPE))
        members.append(Member(f"{path}/{letter}", tarfile.SYMTYPE, long))
        path = f"{path}/{letter}"
    steps = path.removeprefix(root + "/")
    members.append(Member(f"{path}/l", tarfile.SYMTYPE, "/".join([".."] * 20)))  # really: {root} itself
    members.append(Member(f"{root}/escape", tarfile.SYMTYPE, steps + "/l/" + UP_TO_BASE.removesuffix("/")))
    members.append(Member(f"{root}/escape/{name}", data=b"pwned"))
    return EvilArchive(members, "", [base / name])


def _hardlink_absolute(root: str, base: Path) -> EvilArchive:
    victim = base / marker("victim")
    members = [Member(f"{root}/hard", tarfile.LNKTYPE, str(victim)), Member(f"{root}/hard", data=b"pwned")]
    return EvilArchive(members, "names no file before it", [], victim)


def _hardlink_dotdot(root: str, base: Path) -> EvilArchive:
    # A hard link's target is relative to the archive's root, i.e. to src/: four '..' reach ``base``.
    victim = base / marker("victim")
    members = [
        Member(f"{root}/hard", tarfile.LNKTYPE, "../../../../" + victim.name),
        Member(f"{root}/hard", data=b"pwned"),
    ]
    return EvilArchive(members, "names no file before it", [], victim)


EVIL_ARCHIVES: dict[str, tuple[Callable[[str, Path], EvilArchive], bool]] = {
    # id: (the archive, as .zip)
    "dotdot": (_dotdot, False),
    "absolute": (_absolute, False),
    "symlink-etc-passwd": (_symlink_etc_passwd, False),
    "symlink-absolute": (_symlink_absolute, False),
    "symlink-dotdot": (_symlink_dotdot, False),
    "symlinked-folder": (_symlinked_folder, False),
    "symlink-chain": (_symlink_chain, False),
    "hardlink-absolute": (_hardlink_absolute, False),
    "hardlink-dotdot": (_hardlink_dotdot, False),
    "zip-dotdot": (_dotdot, True),
    "zip-absolute": (_absolute, True),
}


@pytest.mark.parametrize("case", sorted(EVIL_ARCHIVES))
def test_unsafe_archive_is_refused_and_writes_nothing_outside(farm: Farm, case: str) -> None:
    make, as_zip = EVIL_ARCHIVES[case]
    project = f"evil-{case}"
    evil = make(f"{project}-1.0", farm.base)  # make_sdist's top folder
    if evil.victim is not None:
        evil.victim.write_text("original")
    sdist = in_tree_backend_sdist(farm.sdists, project, "1.0", "    pass")
    farm.publish(project, repack(sdist, evil.members, as_zip=as_zip))

    failure = farm.failed_build(project)

    assert failure.phase == "extract"
    assert evil.refusal in failure.error
    assert evil.refusal in failure.log
    for aimed in evil.aimed_at:
        assert not aimed.exists(), f"extraction wrote {aimed}"
    if evil.victim is not None:
        assert evil.victim.read_text() == "original"
    assert "running the backend hook" not in failure.log  # nothing of the sdist ran


def test_link_chain_past_path_max_is_refused(farm: Farm) -> None:
    """CVE-2025-4517: tarfile's data filter alone (Python < 3.11.13) lets such a chain write anywhere."""
    project = "evil-past-path-max"
    root = f"{project}-1.0"
    evil = _symlink_chain_past_path_max(root, farm.base)
    sdist = in_tree_backend_sdist(farm.sdists, project, "1.0", "    pass")
    farm.publish(project, repack(sdist, evil.members))
    try:
        response = farm.build(project)
        escaped = [str(p) for p in evil.aimed_at if p.exists()]
        assert escaped == [], (
            f"extraction wrote outside the work folder: {escaped} (build: {response.status_code})"
        )
        assert response.status_code == 422
        assert "wheel build failed in extract" in response.text
    finally:
        for aimed in evil.aimed_at:
            aimed.unlink(missing_ok=True)


# --- Build code that reaches for the network, the host's files, processes, disk and time -----------


def test_network_is_unreachable_during_the_build(farm: Farm) -> None:
    body = f"""\
    import socket
    errors = []
    for host in ("127.0.0.1", "::1"):
        try:
            socket.create_connection((host, {farm.port}), timeout=3).close()
        except OSError as exc:
            errors.append(f"connect to {{host}}:{farm.port}: {{exc}}")
    try:
        socket.getaddrinfo("pypi.org", 443)
    except OSError as exc:
        errors.append(f"resolve pypi.org: {{exc}}")
    if len(errors) == 3:
        raise RuntimeError("no network: " + " | ".join(errors))
    print("REACHED THE NETWORK", errors)
"""
    farm.backend_sdist("net-probe", body)

    failure = farm.failed_build("net-probe")

    assert failure.phase == "build"
    assert "REACHED THE NETWORK" not in failure.log
    connect_v4, connect_v6, resolve = last_line(failure.log, "RuntimeError: no network: ").split(" | ")
    for connect in (connect_v4, connect_v6):
        assert re.search(
            r"Network is unreachable|Connection refused|Cannot assign requested address", connect
        )
    assert re.search(r"Temporary failure in name resolution|Name or service not known|No address", resolve)
    # The proxy was listening on that port all along, for the host.
    assert httpx.get(f"http://127.0.0.1:{farm.port}/healthz").status_code == 200


def test_setup_py_that_reaches_for_the_network_fails_in_the_sandbox(farm: Farm) -> None:
    if not sorted(WHEELHOUSE.glob("setuptools-*.whl")):
        pytest.skip("run `make test` (it downloads the build backends into tests/.wheelhouse)")
    setup_py = f"""\
import socket
try:
    socket.create_connection(("127.0.0.1", {farm.port}), timeout=3).close()
except OSError as exc:
    raise SystemExit("setup.py has no network: " + str(exc))
from setuptools import setup
setup(name="setup-net", version="1.0", py_modules=[])
"""
    farm.publish("setup-net", make_sdist(farm.sdists, "setup-net", "1.0", {"setup.py": setup_py}))

    failure = farm.failed_build("setup-net")

    # setuptools' legacy backend runs setup.py for get_requires_for_build_wheel: in the sandbox too.
    assert failure.phase == "requires"
    assert "running the backend hook requires in the sandbox" in failure.log
    assert re.search(r"setup.py has no network: .*(Network is unreachable|Connection refused)", failure.log)


def test_the_build_cannot_read_the_cache_config_or_home(farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = marker("SECRET")
    cache_secret = farm.cache / "secret.txt"
    cache_secret.write_text(secret)
    config = farm.base / "wheelfarm.toml"
    config.write_text(f'[admin]\ntoken = "{secret}"\n')
    monkeypatch.setenv("WHEELFARM_TEST_TOKEN", secret)  # the proxy's environment (its workers inherit it)
    reads = [str(cache_secret), str(config), str(farm.cache / "built") + "/../secret.txt", "/etc/shadow"]
    folders = list(dict.fromkeys([str(farm.cache), str(farm.base), "/root", str(Path.home())]))
    body = f"""\
    import json, os
    report = {{"read": {{}}, "list": {{}}, "env": sorted(k for k in os.environ if "TOKEN" in k)}}
    for path in {reads!r}:
        try:
            with open(path) as handle:
                report["read"][path] = handle.read()
        except OSError as exc:
            report["read"][path] = f"refused: {{exc}}"
    for folder in {folders!r}:
        try:
            report["list"][folder] = sorted(os.listdir(folder))
        except OSError as exc:
            report["list"][folder] = f"refused: {{exc}}"
    stolen = [v for v in report["read"].values() if not v.startswith("refused: ")]
    stolen += [os.environ[k] for k in report["env"]]
    if not stolen:
        print("SNOOPED " + json.dumps(report), flush=True)
        raise RuntimeError("could not read the proxy's secrets")
    # Smuggle what was read into the wheel's METADATA (and so into the PEP 658 file the proxy serves).
    original = zipfile.ZipFile.writestr
    def writestr(self, name, data, *args, **kwargs):
        if name.endswith("/METADATA"):
            data = data + ("Summary: " + repr(stolen) + "\\n").encode()
        return original(self, name, data, *args, **kwargs)
    zipfile.ZipFile.writestr = writestr
"""
    farm.backend_sdist("snoop", body)

    failure = farm.failed_build("snoop")

    assert failure.phase == "build"
    assert "RuntimeError: could not read the proxy's secrets" in failure.log
    report = json.loads(last_line(failure.log, "SNOOPED "))
    for path in reads:
        assert re.match(r"refused: .*(No such file or directory|Permission denied)", report["read"][path])
    assert report["env"] == []  # the sandbox starts from a clean environment
    # A folder on the way to what the sandbox binds read-only (the interpreter, the builder's front end)
    # shows only that path, never the host's files beside it.
    interpreter = re.search(r"creating the build environment with (\S+)", failure.log)
    assert interpreter is not None
    bound = [Path(os.path.realpath(interpreter[1])).parent.parent, farm.work / ".frontend"]
    for folder in folders:
        seen = report["list"][folder]
        allowed = {
            b.relative_to(folder).parts[0] for b in bound if b.is_relative_to(folder) and b != Path(folder)
        }
        assert isinstance(seen, str) or set(seen) <= allowed, f"the sandbox lists {seen} in {folder}"
    assert secret not in failure.log
    for artifact in (farm.cache / "built").rglob("*"):
        assert not artifact.is_file() or secret.encode() not in artifact.read_bytes(), artifact


def test_writes_outside_the_work_folder_do_not_reach_the_host(farm: Farm) -> None:
    host_tmp = Path("/tmp") / marker("wheelfarm-escape")
    in_cache = farm.cache / marker("escape")
    in_base = farm.base / marker("escape")
    dev_shm = Path("/dev/shm") / marker("wheelfarm-escape")
    body = f"""\
    import os
    results = []
    for path in ({str(host_tmp)!r}, {str(in_cache)!r}, {str(in_base)!r}, "/usr/wheelfarm-escape",
                 "/build/../wheelfarm-escape", {str(dev_shm)!r}):
        try:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w") as handle:
                handle.write("escaped")
            results.append(f"wrote {{path}}")
        except OSError as exc:
            results.append(f"write {{path}}: {{exc}}")
    raise RuntimeError("escape attempts: " + " | ".join(results))
"""
    farm.backend_sdist("scribbler", body)

    failure = farm.failed_build("scribbler")

    assert failure.phase == "build"
    results = last_line(failure.log, "RuntimeError: escape attempts: ").split(" | ")
    # /tmp is the sandbox's own: the write succeeds there, and the host never sees it.
    assert results[0] == f"wrote {host_tmp}"
    assert "Read-only file system" in results[3], results[3]
    for path in (
        host_tmp,
        in_cache,
        in_base,
        dev_shm,
        Path("/usr/wheelfarm-escape"),
        Path("/wheelfarm-escape"),
    ):
        assert not path.exists(), f"the build wrote {path} on the host"


def _pgrep(name: str) -> list[int]:
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in found.split()]


def _pids_cgroups(pid: int) -> list[Path]:
    groups = []
    try:
        lines = Path(f"/proc/{pid}/cgroup").read_text().splitlines()
    except OSError:
        return []
    for line in lines:
        hierarchy, controllers, relative = line.split(":", 2)
        if "pids" in controllers.split(","):
            groups.append(Path("/sys/fs/cgroup/pids") / relative.lstrip("/"))
        elif hierarchy == "0":
            groups.append(Path("/sys/fs/cgroup") / relative.lstrip("/"))
    return [group for group in groups if group.name.startswith("wheelfarm-")]


def test_fork_bomb_hits_the_process_limit_and_leaves_nothing_behind(farm: Farm) -> None:
    name = "wfb" + uuid.uuid4().hex[:12]  # the children's process name (15 characters: the kernel's limit)
    body = f"""\
    import os, time
    children = 0
    while True:
        try:
            pid = os.fork()
        except OSError as exc:
            time.sleep(2)  # long enough for the test to see the children
            raise RuntimeError(f"fork bomb stopped after {{children}} children: {{exc}}") from None
        if pid == 0:
            try:
                os.setsid()  # out of the build's session and process group
                with open("/proc/self/comm", "w") as comm:
                    comm.write({name!r})
                time.sleep(3600)
            finally:
                os._exit(0)
        children += 1
        if children >= 2000:  # no limit at all: wait for the time limit rather than hurt the host
            time.sleep(3600)
"""
    farm.backend_sdist("forkbomb", body)
    seen: set[int] = set()
    groups: set[Path] = set()
    with ThreadPoolExecutor(1) as pool:
        outcome = pool.submit(farm.failed_build, "forkbomb")
        while not outcome.done():
            for pid in _pgrep(name):
                seen.add(pid)
                groups.update(_pids_cgroups(pid))
            time.sleep(0.1)
        failure = outcome.result()

    assert failure.phase == "build"
    assert len(seen) > 10, "the fork bomb's children were never seen: the test would prove nothing"
    if pids_limit_available():
        assert "fork bomb stopped after" in failure.log
        assert "Resource temporarily unavailable" in failure.log
        assert len(seen) < PROCESSES
        assert groups, "the children ran in no wheelfarm pids cgroup"
    else:
        assert "ran out of time" in failure.error
    for _ in range(50):
        if not _pgrep(name):
            break
        time.sleep(0.1)
    assert _pgrep(name) == [], "the fork bomb's children outlived the build"
    assert [str(g) for g in groups if g.exists()] == []


def test_one_huge_file_hits_the_file_size_limit(farm: Farm) -> None:
    body = f"""\
    chunk = b"x" * (1 << 20)
    with open("huge.bin", "wb") as handle:
        for _ in range({MAX_FILE_MB * 2}):
            handle.write(chunk)
"""
    farm.backend_sdist("hugefile", body)

    failure = farm.failed_build("hugefile")

    assert failure.phase == "build"
    # CPython ignores SIGXFSZ, so the write past RLIMIT_FSIZE fails with EFBIG; otherwise the signal kills.
    assert re.search(r"File too large|killed by signal 25", failure.log)


def _many_files_body(folder: str, count: int, *, pause: float, then: str) -> str:
    # ``count`` files of 5 MB, ``pause`` seconds apart, then ``then``.
    return f"""\
    import os, time
    os.makedirs({folder!r}, exist_ok=True)
    chunk = os.urandom(5 << 20)
    for number in range({count}):
        with open(os.path.join({folder!r}, f"fill-{{number}}.bin"), "wb") as handle:
            handle.write(chunk)
        time.sleep({pause})
    {then}
"""


# Twice the output limit at once, then a pause in which the size watch (every 0.5 s) looks at least twice,
# then a wheel: a build the output limit must stop.
OVER_THE_LIMIT = 2 * MAX_OUTPUT_MB // 5
THEN_A_WHEEL = "time.sleep(1.2)"


def test_many_files_hit_the_output_limit(farm: Farm) -> None:
    farm.backend_sdist("manyfiles", _many_files_body("fill", 100, pause=0.05, then="time.sleep(3600)"))

    failure = farm.failed_build("manyfiles")

    assert failure.phase == "build"
    assert f"wrote more than the limit of {MAX_OUTPUT_MB * MIB} bytes" in failure.error
    assert f"wrote more than the limit of {MAX_OUTPUT_MB * MIB} bytes" in failure.log
    assert failure.seconds < TIMEOUT  # stopped by the size watch, not by the clock


@pytest.mark.parametrize("folder", ["/tmp/fill", "/fill", "/dev/shm/fill"])
def test_filling_the_sandbox_tmpfs_hits_the_output_limit(farm: Farm, folder: str) -> None:
    project = "tmpfill" + folder.replace("/", "-")
    farm.backend_sdist(project, _many_files_body(folder, OVER_THE_LIMIT, pause=0, then=THEN_A_WHEEL))

    failure = farm.failed_build(project)

    # /tmp and /dev/shm are tmpfs mounts sized to the output limit; the root is read-only.
    assert failure.phase == "build"
    assert "No space left on device" in failure.log or "Read-only file system" in failure.log


def test_filling_deeply_nested_folders_hits_the_output_limit(farm: Farm) -> None:
    descend = "\n".join(f"    os.mkdir({'d' * 200!r}); os.chdir({'d' * 200!r})" for _ in range(25))
    body = f"    import os\n{descend}\n" + _many_files_body(".", OVER_THE_LIMIT, pause=0, then=THEN_A_WHEEL)
    farm.backend_sdist("deepfill", body)

    failure = farm.failed_build("deepfill")

    assert failure.phase == "build"
    assert "wrote more than the limit" in failure.error


def test_an_sdist_that_unpacks_past_the_limits_is_refused(farm: Farm) -> None:
    sdist = in_tree_backend_sdist(farm.sdists, "tarbomb", "1.0", "    pass")
    zeros = Member("tarbomb-1.0/zeros.bin", data=bytes((MAX_OUTPUT_MB + 20) * MIB))  # packs to ~80 kB
    farm.publish("tarbomb", repack(sdist, [zeros]))

    failure = farm.failed_build("tarbomb")

    assert failure.phase == "extract"
    assert re.search(r"exceed|limit", failure.error)


def test_a_build_that_never_ends_runs_out_of_time(farm: Farm) -> None:
    farm.backend_sdist("sleeper", "    import time\n    time.sleep(10 ** 6)")

    failure = farm.failed_build("sleeper")

    assert failure.phase == "build"
    assert f"ran out of time ({TIMEOUT:.0f} s)" in failure.error
    assert f"ran out of time ({TIMEOUT:.0f} s)" in failure.log
    assert TIMEOUT <= failure.seconds < TIMEOUT + 20


def test_the_proxy_keeps_serving_and_building_while_a_hostile_build_spins(farm: Farm) -> None:
    farm.backend_sdist("spinner", "    while True:\n        pass")
    farm.backend_sdist("goodpkg", "    pass")
    farm.backend_sdist("goodpkg-after", "    pass")
    started = time.monotonic()
    with ThreadPoolExecutor(1) as pool:
        spinning: Future[Failure] = pool.submit(farm.failed_build, "spinner")
        builder = farm.proxy.services.builder
        assert builder is not None
        while not any(r.job.project == "spinner" and r.started_at for r in builder.running()):
            assert time.monotonic() - started < 10, "the spinner's build never started"
            time.sleep(0.05)
        time.sleep(1.0)  # well into the spinning backend

        for url in (f"{farm.proxy.url}/healthz", f"{farm.proxy.url}/t/{TARGET}/simple/goodpkg/"):
            began = time.monotonic()
            response = httpx.get(url, timeout=10)
            assert response.status_code == 200
            assert time.monotonic() - began < 1.0, f"{url} took {time.monotonic() - began:.2f} s"
        good = farm.build("goodpkg")  # the other worker builds meanwhile
        assert good.status_code == 200
        assert zipfile.is_zipfile(io.BytesIO(good.content))
        assert not spinning.done(), "the spinner ended before the other requests were made"

        failure = spinning.result()
    assert failure.phase == "build"
    assert f"ran out of time ({TIMEOUT:.0f} s)" in failure.error
    # The pool survives: a normal sdist still builds afterwards.
    after = farm.build("goodpkg-after")
    assert after.status_code == 200
    assert after.headers["Content-Disposition"] == 'attachment; filename="goodpkg_after-1.0-py3-none-any.whl"'
