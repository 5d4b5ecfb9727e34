"""``wheelfarm verify --rebuild``: a farm-built wheel built again here, in the same sandbox, from the sdist
and with the build requirements its verified statement names, must come out byte for byte the same."""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import os
import platform
import re
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from dists import FIXED_TIMES, RANDOM_VALUE, make_wheel
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from hostile import Farm, needs_bwrap
from packaging.tags import platform_tags
from serve import WHEELFARM

from builder.requirements import RequirementError, resolve
from proxy.provenance.rebuild import Outcome, download_sdist, rebuild

# A backend that writes the version of its build requirement ``pinme`` into its module, with fixed zip
# times: a rebuild is identical only if it installed the pinme the farm's build did.
PINME_VERSION_INSIDE = (
    """\
    import importlib.metadata
    pinned = importlib.metadata.version("pinme")
"""
    + FIXED_TIMES
    + """\
    original_with_times = zipfile.ZipFile.writestr
    def with_version(self, name, data, *args, **kwargs):
        if getattr(name, "filename", name).endswith(".dist-info/RECORD"):
            original_with_times(self, "pinme_version.txt", pinned)
            digest = base64.urlsafe_b64encode(hashlib.sha256(pinned.encode()).digest()).rstrip(b"=")
            data = f"pinme_version.txt,sha256={digest.decode()},{len(pinned)}\\n" + data
        return original_with_times(self, name, data, *args, **kwargs)
    zipfile.ZipFile.writestr = with_version
"""
)


def _verify(*args: str, temp: Path | None = None) -> subprocess.CompletedProcess[str]:
    """``wheelfarm verify ARGS``; ``temp``: its temporary folder (TMPDIR), to see what it leaves there."""
    env = {**os.environ, "TMPDIR": str(temp)} if temp is not None else None
    return subprocess.run(
        [str(WHEELFARM), "verify", *args], capture_output=True, text=True, timeout=600, env=env
    )


def _built(farm: Farm, project: str, folder: Path) -> Path:
    response = farm.built_wheel(project)
    name = re.search(r'filename="([^"]+)"', response.headers["Content-Disposition"])[1]  # type: ignore[index]
    wheel = folder / name
    wheel.write_bytes(response.content)
    return wheel


def test_rebuild_needs_the_farms_index(tmp_path: Path) -> None:
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    keys = tmp_path / "keys.json"
    keys.write_text('{"keys": []}')
    for args in (
        ["--rebuild", "--keys", str(keys), str(wheel)],
        ["--rebuild", "--offline", "--keys", str(keys), "--farm", "http://127.0.0.1:9", str(wheel)],
    ):
        ran = _verify(*args)
        assert ran.returncode == 2, ran.stdout + ran.stderr
        assert "--rebuild" in ran.stderr
        assert "--farm" in ran.stderr
        assert ran.stdout == ""


@needs_bwrap
def test_a_farm_built_wheel_is_rebuilt_identical_with_the_requirements_it_was_built_with(
    farm: Farm, tmp_path: Path
) -> None:
    pins = tmp_path / "pins"
    farm.publish_wheel("pinme", make_wheel(pins, "pinme", "1.0", {"pinme.py": b""}))
    sdist = farm.backend_sdist("rebuilt-pinned", PINME_VERSION_INSIDE, requires=("pinme",))
    wheel = _built(farm, "rebuilt-pinned", tmp_path)
    # The signed statement names pinme 1.0. Upstream now has pinme 2.0, which the farm's plain index
    # lists once its page is stale: an unpinned rebuild would install it and make other bytes.
    farm.publish_wheel("pinme", make_wheel(pins, "pinme", "2.0", {"pinme.py": b""}))
    farm.proxy.clock.advance(3600)
    listed = httpx.get(f"{farm.proxy.url}/plain/simple/pinme/?format=json", timeout=30).json()["versions"]
    assert "2.0" in listed

    temp = tmp_path / "tmp"
    temp.mkdir()
    ran = _verify("--farm", farm.proxy.url, "--rebuild", str(wheel), temp=temp)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert re.fullmatch(
        rf"OK   {re.escape(wheel.name)}: signed by \w+; built from rebuilt-pinned-1.0.tar.gz .*; "
        r"rebuilt: identical\n",
        ran.stdout,
    ), ran.stdout
    assert list(temp.iterdir()) == []  # the rebuild's folders are gone

    # A pip report names the wheel by URL: the signed wheel is fetched from the farm and rebuilt.
    report = tmp_path / "report.json"
    env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "PIP_CONFIG_FILE": "/dev/null",
           "PIP_DISABLE_PIP_VERSION_CHECK": "1"}  # fmt: skip
    pip = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--no-deps",
         "--only-binary", ":all:", "--report", str(report), "--index-url", f"{farm.proxy.url}/simple/",
         "rebuilt-pinned"],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert pip.returncode == 0, pip.stderr
    ran = _verify("--farm", farm.proxy.url, "--rebuild", str(report), temp=temp)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert list(temp.iterdir()) == []
    assert ran.stdout.startswith(f"OK   {wheel.name}:")
    assert ran.stdout.endswith("; rebuilt: identical\n")

    # An installed environment: the signed wheel its METADATA names is fetched from the farm and rebuilt.
    site = tmp_path / "site"
    installing = [sys.executable, "-m", "pip", "install", "--no-deps", "--target", str(site), str(wheel)]
    assert subprocess.run(installing, capture_output=True, env=env, timeout=120).returncode == 0
    ran = _verify("--farm", farm.proxy.url, "--rebuild", str(site), temp=temp)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.startswith(f"OK   {wheel.name}: installed in {site}, every file as signed;")
    assert ran.stdout.endswith("; rebuilt: identical\n")
    assert list(temp.iterdir()) == []

    # The index now has other bytes as pinme 1.0 (a public index never reuses a file name; a mirror might):
    # the rebuild still comes out identical, and names the build requirement that was not the signed one.
    farm.index.remove_file("pinme-1.0-py3-none-any.whl")
    other = make_wheel(tmp_path / "other", "pinme", "1.0", {"pinme.py": b"# other bytes\n"})
    assert other.name == "pinme-1.0-py3-none-any.whl"
    farm.publish_wheel("pinme", other)
    farm.proxy.clock.advance(3600)
    ran = _verify("--farm", farm.proxy.url, "--rebuild", str(wheel))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert ran.stdout.endswith(
        "; rebuilt: identical; build requirements not as signed: pinme-1.0-py3-none-any.whl\n"
    ), ran.stdout

    # Upstream now serves other bytes under the sdist's name: the rebuild takes the sdist from the farm (which
    # checked it against the sha256 its page gave when it cached it), never from a URL the statement names.
    farm.index.corrupt_files.append(sdist.name)
    try:
        ran = _verify("--farm", farm.proxy.url, "--rebuild", str(wheel))
    finally:
        farm.index.corrupt_files.remove(sdist.name)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    assert "; rebuilt: identical" in ran.stdout


class _Sdists(http.server.BaseHTTPRequestHandler):
    """Serves other bytes than the signed sdist's, or the right length one byte every half second."""

    def do_GET(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "1000")
        self.end_headers()
        if self.path.endswith("/other"):
            self.wfile.write(b"x" * 1000)
            return
        with contextlib.suppress(OSError):
            for _ in range(1000):
                self.wfile.write(b"x")
                self.wfile.flush()
                time.sleep(0.5)

    def log_message(self, *args: object) -> None:
        pass


def test_the_sdist_download_checks_the_signed_sha256_and_has_a_deadline(tmp_path: Path) -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Sdists)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    signed = hashlib.sha256(b"the signed sdist").hexdigest()
    try:
        with pytest.raises(
            Exception, match=f"has sha256 {hashlib.sha256(b'x' * 1000).hexdigest()}, not the signed"
        ):
            download_sdist(f"{base}/other", signed, tmp_path / "demo-1.0.tar.gz", timeout=10)
        started = time.monotonic()
        with pytest.raises(Exception, match="took more than 2 s to download"):
            download_sdist(f"{base}/trickle", signed, tmp_path / "demo-1.0.tar.gz", timeout=2)
        assert time.monotonic() - started < 10
        assert list(tmp_path.iterdir()) == []  # nothing left behind, not even the partial file
    finally:
        server.shutdown()


@needs_bwrap
def test_a_wheel_that_comes_out_different_fails_naming_the_files(farm: Farm, tmp_path: Path) -> None:
    farm.backend_sdist("random-every-time", RANDOM_VALUE)
    wheel = _built(farm, "random-every-time", tmp_path)

    ran = _verify("--farm", farm.proxy.url, "--rebuild", str(wheel))
    assert ran.returncode == 1, ran.stdout + ran.stderr
    assert ran.stdout.startswith(f"FAIL {wheel.name}: signed by "), ran.stdout
    assert ran.stdout.endswith(
        "; rebuilt: differs in random_every_time-1.0.dist-info/RECORD, random_every_time.py\n"
    ), ran.stdout
    # Without --rebuild the same wheel passes: the failure is the rebuild's.
    assert _verify("--farm", farm.proxy.url, str(wheel)).returncode == 0


def test_constraints_pin_what_uv_resolves(tmp_path: Path) -> None:
    index = FakeIndex()
    for version in ("1.0", "2.0"):
        index.add_file("pinme", FakeFile.from_path(make_wheel(tmp_path / "wheels", "pinme", version, {})))
    uv = Path(sys.executable).parent / "uv"
    with FakeUpstreamServer(index) as upstream:

        def resolved(constraints: tuple[str, ...]) -> list[str]:
            scratch = tmp_path / f"scratch-{len(constraints)}"
            scratch.mkdir()
            wheels = resolve(
                ["pinme"],
                interpreter=sys.executable,
                index_url=upstream.simple_url,
                scratch=scratch,
                uv=str(uv),
                uv_cache=tmp_path / "uv-cache",
                output=lambda _: None,
                timeout=120,
                constraints=constraints,
            )
            return [wheel.version for wheel in wheels]

        assert resolved(()) == ["2.0"]
        assert resolved(("pinme==1.0",)) == ["1.0"]


@pytest.mark.parametrize(
    "constraint", ["pinme @ https://example.invalid/pinme-1.0.whl", "not a requirement!"]
)
def test_a_constraint_must_be_a_plain_requirement(tmp_path: Path, constraint: str) -> None:
    with pytest.raises(RequirementError):
        resolve(
            ["pinme"],
            interpreter=sys.executable,
            index_url="http://127.0.0.1:9/simple/",
            scratch=tmp_path,
            uv=str(Path(sys.executable).parent / "uv"),
            uv_cache=tmp_path / "uv-cache",
            output=lambda _: None,
            timeout=30,
            constraints=[constraint],
        )


def _statement(target: str, sdist_url: str = "https://files.example/demo-1.0.tar.gz") -> dict[str, Any]:
    """A statement of statement.py's shape (as verify hands it over once its signature checked out)."""
    sdist = {"name": "demo-1.0.tar.gz", "uri": sdist_url, "digest": {"sha256": "a" * 64}}
    return {
        "predicate": {
            "buildDefinition": {
                "externalParameters": {"sdist": sdist, "target": target},
                "resolvedDependencies": [sdist],
            }
        }
    }


def test_what_this_host_cannot_rebuild_fails_saying_why(tmp_path: Path) -> None:
    """Asked for a rebuild, a target this host cannot build is a failure, and so is a sdist URL that is not
    http(s): named, before anything is downloaded (the URLs here would not answer)."""
    wheel = tmp_path / "demo-1.0-py3-none-any.whl"
    wheel.write_bytes(b"")
    host = next(tag for tag in platform_tags() if tag.startswith(("manylinux_", "musllinux_")))
    other_arch = "aarch64" if platform.machine() == "x86_64" else "x86_64"
    cases = {
        f"cp311-manylinux_2_17_{other_arch}": f"manylinux_2_17_{other_arch} is not a platform of this host",
        f"cp399-{host}": "cannot rebuild here: no Python 3.99 on this host",
    }
    for target, why in cases.items():
        rebuilt = rebuild(wheel, _statement(target), "http://127.0.0.1:9")
        assert rebuilt.outcome is Outcome.FAILED
        assert why in rebuilt.message
    rebuilt = rebuild(wheel, _statement(f"cp311-{host}", "file:///etc/passwd"), "http://127.0.0.1:9")
    assert rebuilt.outcome is Outcome.FAILED
    assert "sdist URL 'file:///etc/passwd' is not http(s)" in rebuilt.message
