"""Bytes a build hides where no count of its folders or processes can see them, on a small disk.

A build can keep deleted files alive without any descriptor of its own: mapped into memory with mmap (the
watch reads /proc/PID/map_files, as root), or in flight in a Unix socket it never reads (SCM_RIGHTS: no
/proc view shows them). The last wall is the disk itself: when the work folder's disk has less than
``[builder] min_free_mb`` free, builds stop, as the host's failure, which is not remembered as final.
These tests mount a small tmpfs as the work folder, so they need root.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from buildkit import TARGET, start_builder_proxy
from dists import in_tree_backend_sdist
from fake_upstream import FakeFile, FakeUpstreamServer
from fakes import FakeClock, ProxyServer
from hostile import needs_bwrap

pytestmark = [
    needs_bwrap,
    pytest.mark.skipif(os.geteuid() != 0, reason="mounting a small disk for the work folder needs root"),
]

DISK_MB = 400
FILE_MB = 20
HIDDEN_MB = 280  # leaves 120 MiB free: under the floor of 150
FLOOR_MB = 150


@pytest.fixture
def small_disk_proxy(
    fake_upstream: FakeUpstreamServer, clock: FakeClock, tmp_path: Path
) -> Iterator[ProxyServer]:
    work = tmp_path / "work"
    work.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={DISK_MB}m", "tmpfs", str(work)], check=True)
    proxy = start_builder_proxy(
        fake_upstream,
        clock,
        tmp_path / "cache",
        builder_work_dir=work,
        builder_min_free_mb=FLOOR_MB,
        builder_max_output_mb=60,
        builder_max_file_mb=FILE_MB,
        builder_timeout=30.0,
        builder_hold_seconds=60.0,
    )
    try:
        yield proxy
    finally:
        proxy.stop()
        subprocess.run(["umount", "-l", str(work)], check=False)


HIDE_IN_FLIGHT = f"""\
    import array, os, socket, time
    sender, receiver = socket.socketpair()
    chunk = b"x" * ({FILE_MB - 1} << 20)
    for number in range({HIDDEN_MB // (FILE_MB - 1) + 1}):
        name = f"hidden-{{number}}"
        with open(name, "wb") as handle:
            handle.write(chunk)
            handle.flush()
            # In flight to a socket nobody reads: the file lives on with no descriptor anywhere.
            rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [handle.fileno()]))]
            sender.sendmsg([b"x"], rights)
        os.unlink(name)
    print("HIDDEN IN FLIGHT", flush=True)
    time.sleep(20)
"""

HIDE_IN_MAPPINGS = f"""\
    import ctypes, mmap, os, time
    libc = ctypes.CDLL(None)
    libc.mmap.restype = ctypes.c_void_p
    libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t] + [ctypes.c_int] * 3 + [ctypes.c_long]
    size = {FILE_MB - 1} << 20
    for number in range({HIDDEN_MB // (FILE_MB - 1) + 1}):
        name = f"mapped-{{number}}"
        with open(name, "wb") as handle:
            handle.write(b"x" * size)
        fd = os.open(name, os.O_RDONLY)
        libc.mmap(None, size, mmap.PROT_READ, mmap.MAP_SHARED, fd, 0)
        os.close(fd)  # only the mapping keeps the file now
        os.unlink(name)
    print("HIDDEN IN MAPPINGS", flush=True)
    time.sleep(20)
"""


def _build(
    proxy: ProxyServer, fake_upstream: FakeUpstreamServer, tmp_path: Path, project: str, body: str
) -> str:
    sdist = in_tree_backend_sdist(tmp_path / "sdists", project, "1.0", body)
    fake_upstream.index.add_file(project, FakeFile.from_path(sdist))
    scope = f"{proxy.url}/t/{TARGET}/simple/{project}/"
    entries = httpx.get(scope + "?format=json", timeout=30).json()["files"]
    (pending,) = [e for e in entries if e.get("_wheelfarm", {}).get("pending")]
    response = httpx.get(str(httpx.URL(scope).join(pending["url"])), timeout=120)
    assert response.status_code == 422, response.text
    return response.text


def test_bytes_hidden_in_a_socket_stop_the_build_at_the_disk_floor(
    small_disk_proxy: ProxyServer, fake_upstream: FakeUpstreamServer, tmp_path: Path
) -> None:
    answer = _build(small_disk_proxy, fake_upstream, tmp_path, "hides-in-flight", HIDE_IN_FLIGHT)

    assert "wheel build failed in internal: the disk of the work folder has only" in answer
    assert f"(builds stop below {FLOOR_MB} MiB)" in answer


def test_bytes_hidden_in_mappings_are_counted(
    small_disk_proxy: ProxyServer, fake_upstream: FakeUpstreamServer, tmp_path: Path
) -> None:
    answer = _build(small_disk_proxy, fake_upstream, tmp_path, "hides-in-maps", HIDE_IN_MAPPINGS)

    assert "wheel build failed in build: the backend's wheel hook wrote more than the limit" in answer
