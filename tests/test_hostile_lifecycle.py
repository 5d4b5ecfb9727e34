"""Builds and the proxy's life: a killed proxy takes its builds with it, the next start clears what they
left, and a proxy whose sandbox cannot work says exactly why and offers no build links.

These run the real `wheelfarm serve` command (tests/serve.py), since what is tested is the process tree.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from buildkit import TARGET, absolute, page, pending_links, start_builder_proxy
from dists import in_tree_backend_sdist
from fake_upstream import FakeFile, FakeIndex, FakeUpstreamServer
from fakes import FakeClock, free_port
from hostile import needs_bwrap
from serve import RunningServer, wheelfarm_serve

pytestmark = needs_bwrap


def _serve_args(port: int, cache: Path, upstream: FakeUpstreamServer, *extra: str) -> list[str]:
    return [
        "--port", str(port), "--cache-dir", str(cache), "--upstream", upstream.simple_url,
        "--logging-format", "json", "--builder-timeout", "600", *extra,
    ]  # fmt: skip


def _pending_url(server: RunningServer, project: str) -> str:
    scope = f"{server.url}/t/{TARGET}/simple/{project}/"
    entries = httpx.get(scope + "?format=json", timeout=30).json()["files"]
    pending = [e for e in entries if e.get("_wheelfarm", {}).get("pending")]
    assert len(pending) == 1, f"no build-pending link for {project}: {entries}"
    return str(httpx.URL(scope).join(pending[0]["url"]))


def _processes_named(name: str) -> list[int]:
    found = subprocess.run(["pgrep", "-x", name], capture_output=True, text=True, check=False).stdout
    return [int(pid) for pid in found.split()]


def _workers_in(work: Path) -> list[int]:
    """Build worker processes working under ``work`` (their folder is their cwd or on their command line)."""
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            command = Path(f"/proc/{pid}/cmdline").read_bytes()
            cwd = Path(os.readlink(f"/proc/{pid}/cwd"))
        except OSError:
            continue
        if b"builder.worker" in command and (cwd.is_relative_to(work) or str(work).encode() in command):
            found.append(int(pid))
    return found


def _build_folders(work: Path) -> list[str]:
    return sorted(p.name for p in work.iterdir() if not p.name.startswith(".")) if work.exists() else []


def test_a_killed_proxy_takes_its_builds_with_it_and_the_next_start_clears_what_they_left(
    tmp_path: Path,
) -> None:
    name = "wfk" + uuid.uuid4().hex[:12]  # the build's process name (15 characters: the kernel's limit)
    body = f"""\
    import os, time
    if os.fork() == 0:  # a child in a session of its own, as a daemon would
        os.setsid()
    with open("/proc/self/comm", "w") as comm:
        comm.write({name!r})
    time.sleep(3600)
"""
    index = FakeIndex()
    index.add_file("forever", FakeFile.from_path(in_tree_backend_sdist(tmp_path, "forever", "1.0", body)))
    cache, port = tmp_path / "cache", free_port()
    with FakeUpstreamServer(index) as upstream:
        args = _serve_args(port, cache, upstream)
        with wheelfarm_serve(args, port, tmp_path / "first") as first:
            assert first.builder()["state"] == "ready", first.stderr()
            link = _pending_url(first, "forever")
            client = threading.Thread(target=_request_ignoring_errors, args=(link,), daemon=True)
            client.start()
            deadline = time.monotonic() + 60
            while len(_processes_named(name)) < 2:
                assert time.monotonic() < deadline, f"the build never started:\n{first.stderr()}"
                time.sleep(0.05)
            workers = _workers_in(cache / "work")
            assert workers, "no build worker found"

            first.process.kill()  # kill -9: no clean-up of ours runs
            first.process.wait()

            deadline = time.monotonic() + 15
            while _processes_named(name) or _workers_in(cache / "work"):
                assert time.monotonic() < deadline, (
                    f"builds outlived the proxy: {_processes_named(name)} {_workers_in(cache / 'work')}"
                )
                time.sleep(0.05)
            left = _build_folders(cache / "work")
            assert left, "the killed build left no work folder: the restart below would prove nothing"

        with wheelfarm_serve(args, port, tmp_path / "second") as second:
            assert second.builder()["state"] == "ready", second.stderr()
            assert _build_folders(cache / "work") == [], "the restart kept the earlier run's work folders"
            removed = [line for line in second.log_lines() if line.get("event") == "leftover_build_removed"]
            assert sorted(line["folder"] for line in removed) == left


def _request_ignoring_errors(url: str) -> None:
    with contextlib.suppress(httpx.HTTPError):  # the proxy was killed under it
        httpx.get(url, timeout=120)


def test_a_proxy_whose_sandbox_cannot_work_says_why_and_offers_no_builds(tmp_path: Path) -> None:
    """No user namespaces here (the kernel's limit set to 0 in a user namespace of the proxy's own)."""
    index = FakeIndex()
    index.add_file(
        "needs-build", FakeFile.from_path(in_tree_backend_sdist(tmp_path, "needs-build", "1.0", ""))
    )
    probe = subprocess.run(["unshare", "--user", "--map-root-user", "true"], capture_output=True, check=False)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a user namespace here: {probe.stderr.decode().strip()}")
    port = free_port()
    wrapper = [
        "unshare", "--user", "--map-root-user", "sh", "-c",
        'echo 0 > /proc/sys/user/max_user_namespaces && exec "$@"', "sh",
    ]  # fmt: skip
    with FakeUpstreamServer(index) as upstream:
        args = _serve_args(port, tmp_path / "cache", upstream)
        with wheelfarm_serve(args, port, tmp_path / "server", wrapper=wrapper) as server:
            state = server.builder()
            assert state["state"] == "unavailable", state
            # Root outside (the test runs as root): the build uids are not mapped in there. Any other user
            # (root of the namespace maps to it): bubblewrap cannot make the sandbox's namespaces.
            expected = "is not mapped" if os.geteuid() == 0 else "Creating new namespace failed"
            assert expected in state["reason"], state["reason"]
            events = [line for line in server.log_lines() if line.get("event") == "builds_disabled"]
            assert [line["reason"] for line in events] == [state["reason"]]
            page = httpx.get(f"{server.url}/t/{TARGET}/simple/needs-build/?format=json", timeout=30)
            assert page.status_code == 200
            assert not any(e.get("_wheelfarm", {}).get("pending") for e in page.json()["files"])


def test_a_broken_bubblewrap_is_named_in_health_and_no_link_is_offered(tmp_path: Path) -> None:
    # Where any user may run it: as root, the launcher starts bubblewrap as the build user.
    shelf = Path(tempfile.mkdtemp(prefix="wheelfarm-fake-bwrap-"))
    shelf.chmod(0o755)
    fake = shelf / "bwrap"
    fake.write_text("#!/bin/sh\necho 'bwrap: setting up uid map: Permission denied' >&2\nexit 1\n")
    fake.chmod(0o755)
    index = FakeIndex()
    index.add_file(
        "needs-build", FakeFile.from_path(in_tree_backend_sdist(tmp_path, "needs-build", "1.0", ""))
    )
    port = free_port()
    with FakeUpstreamServer(index) as upstream:
        args = _serve_args(port, tmp_path / "cache", upstream, "--builder-bwrap", str(fake))
        with wheelfarm_serve(args, port, tmp_path / "server") as server:
            state = server.builder()
            assert state["state"] == "unavailable"
            assert "bwrap: setting up uid map: Permission denied" in state["reason"]
            page = httpx.get(f"{server.url}/t/{TARGET}/simple/needs-build/?format=json", timeout=30).json()
            assert not any(e.get("_wheelfarm", {}).get("pending") for e in page["files"])
            # A client that still follows an old link is told the same, not blamed for the package.
            sdist = next(e for e in page["files"] if e["filename"].endswith(".tar.gz"))
            link = (
                f"{server.url}/t/{TARGET}/build/{TARGET}/needs-build/{sdist['hashes']['sha256']}/"
                f"needs_build-1.0-cp311-cp311-manylinux_2_36_x86_64.whl"
            )
            refused = httpx.get(link, timeout=30)
            assert refused.status_code == 404
            assert "no builder here builds" in refused.text
    shutil.rmtree(shelf)


def test_stopping_the_proxy_stops_its_builds(tmp_path: Path) -> None:
    name = "wfs" + uuid.uuid4().hex[:12]
    body = f"""\
    import time
    with open("/proc/self/comm", "w") as comm:
        comm.write({name!r})
    time.sleep(3600)
"""
    index = FakeIndex()
    index.add_file("forever", FakeFile.from_path(in_tree_backend_sdist(tmp_path, "forever", "1.0", body)))
    port = free_port()
    with FakeUpstreamServer(index) as upstream:
        args = _serve_args(port, tmp_path / "cache", upstream)
        with wheelfarm_serve(args, port, tmp_path / "server") as server:
            assert server.builder()["state"] == "ready"
            threading.Thread(target=_request_ignoring_errors, args=(_pending_url(server, "forever"),)).start()
            deadline = time.monotonic() + 60
            while not _processes_named(name):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert server.stop(signal.SIGTERM) == 0
        deadline = time.monotonic() + 15
        while _processes_named(name):
            assert time.monotonic() < deadline, "a build outlived the proxy's orderly stop"
            time.sleep(0.05)
        assert _build_folders(tmp_path / "cache" / "work") == []


def test_a_sandbox_that_fails_to_start_is_the_hosts_failure_and_is_tried_again(
    fake_upstream: FakeUpstreamServer, build_index: FakeIndex, clock: FakeClock, tmp_path: Path
) -> None:
    """A build whose sandbox could not start (here: bubblewrap out of processes, as another build's fork
    bomb can cause for a non-root proxy) fails as the host's trouble, not the package's, and is not
    remembered: the next request builds it."""
    shelf = Path(tempfile.mkdtemp(prefix="wheelfarm-flaky-bwrap-", dir="/var/tmp"))
    shelf.chmod(0o755)
    flag = shelf / "fail-now"
    flaky = shelf / "bwrap"
    flaky.write_text(
        f"#!/bin/sh\nif [ -e {flag} ]; then\n"
        "  echo 'bwrap: Creating new namespace failed: Resource temporarily unavailable' >&2; exit 1\nfi\n"
        'exec /usr/bin/bwrap "$@"\n'
    )
    flaky.chmod(0o755)
    proxy = start_builder_proxy(fake_upstream, clock, tmp_path / "cache", builder_bwrap=str(flaky))
    try:
        assert proxy.health()["builder"]["state"] == "ready"
        flag.touch()
        failed = httpx.get(absolute(proxy, "tinypure", pending_links(page(proxy, "tinypure"))[0]["url"]))
        flag.unlink()
        again = pending_links(page(proxy, "tinypure"))
        built = httpx.get(absolute(proxy, "tinypure", again[0]["url"]), timeout=120) if again else None
    finally:
        proxy.stop()
        shutil.rmtree(shelf)

    assert failed.status_code == 422
    assert "wheel build failed in internal: the sandbox could not start: bwrap: Creating new namespace" in (
        failed.text
    )
    assert again, "the host's failure was remembered as the package's: no build link any more"
    assert built is not None
    assert built.status_code == 200
