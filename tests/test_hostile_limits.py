"""Hostile build code that exhausts the machine: processes, disk, and time.

A build that forks without end, writes one huge file or many files, fills the sandbox's tmpfs mounts or
folders nested deeper than PATH_MAX, or never ends, must be stopped by its own limits (the process count,
file size, output size and time limit of the farm in tests/hostile.py), fail with the limit named in its
log, leave no processes or cgroups behind, and never slow down the proxy's answers or the other builds
meanwhile.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import time
import uuid
import zipfile
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path

import httpx
import pytest
from buildkit import TARGET
from fakes import wait_for
from hostile import MAX_FILE_MB, MAX_OUTPUT_MB, MIB, PROCESSES, TIMEOUT, Failure, Farm, needs_bwrap

from builder.sandbox import pids_limit_available

pytestmark = needs_bwrap


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
        while not outcome.done():  # a look every 0.1 s while the build runs
            for pid in _pgrep(name):
                seen.add(pid)
                groups.update(_pids_cgroups(pid))
            wait([outcome], timeout=0.1)
        failure = outcome.result()

    assert failure.phase == "build"
    assert len(seen) > 10, "the fork bomb's children were never seen: the test would prove nothing"
    if pids_limit_available():
        assert "fork bomb stopped after" in failure.log
        assert "Resource temporarily unavailable" in failure.log
        assert len(seen) < PROCESSES
        if os.geteuid() == 0:  # as root a pids cgroup; as any other user RLIMIT_NPROC
            assert groups, "the children ran in no wheelfarm pids cgroup"
    else:
        assert "ran out of time" in failure.error
    wait_for(lambda: not _pgrep(name), "the fork bomb's children to go with the build", seconds=5)
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
def test_filling_scratch_space_hits_the_output_limit(farm: Farm, folder: str) -> None:
    project = "tmpfill" + folder.replace("/", "-")
    farm.backend_sdist(project, _many_files_body(folder, OVER_THE_LIMIT, pause=0, then=THEN_A_WHEEL))

    failure = farm.failed_build(project)

    # /tmp and /dev/shm are folders of the build's own tree, counted with the rest; the root is read-only.
    assert failure.phase == "build"
    if folder == "/fill":
        assert "Read-only file system" in failure.log
    else:
        assert f"wrote more than the limit of {MAX_OUTPUT_MB * MIB} bytes" in failure.error


def test_filling_deeply_nested_folders_hits_the_output_limit(farm: Farm) -> None:
    descend = "\n".join(f"    os.mkdir({'d' * 200!r}); os.chdir({'d' * 200!r})" for _ in range(25))
    body = f"    import os\n{descend}\n" + _many_files_body(".", OVER_THE_LIMIT, pause=0, then=THEN_A_WHEEL)
    farm.backend_sdist("deepfill", body)

    failure = farm.failed_build("deepfill")

    assert failure.phase == "build"
    assert "wrote more than the limit" in failure.error


def test_a_build_that_never_ends_runs_out_of_time(farm: Farm) -> None:
    farm.backend_sdist("sleeper", "    import time\n    time.sleep(10 ** 6)")

    failure = farm.failed_build("sleeper")

    assert failure.phase == "build"
    assert f"ran out of time ({TIMEOUT:.0f} s)" in failure.error
    assert f"ran out of time ({TIMEOUT:.0f} s)" in failure.log
    assert TIMEOUT <= failure.seconds < TIMEOUT + 20


def test_the_proxy_keeps_serving_and_building_while_a_hostile_build_spins(farm: Farm) -> None:
    name = "wfs" + uuid.uuid4().hex[:12]  # the spinning backend's process name, to see it spin
    spin = f"""\
    with open("/proc/self/comm", "w") as comm:
        comm.write({name!r})
    while True:
        pass
"""
    farm.backend_sdist("spinner", spin)
    farm.backend_sdist("goodpkg", "    pass")
    farm.backend_sdist("goodpkg-after", "    pass")
    with ThreadPoolExecutor(1) as pool:
        spinning: Future[Failure] = pool.submit(farm.failed_build, "spinner")
        wait_for(lambda: bool(_pgrep(name)), "the spinner's backend to spin", seconds=60)

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
