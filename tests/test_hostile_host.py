"""Hostile builds that reach for the host through the builder itself, not through the sandbox's walls.

The sandbox keeps a build's code inside; these attacks wait for the builder to run something of the build's
on the host (a replaced interpreter, a ``.pth`` file of a build requirement), read a secret from a process
the build can see (the sandbox's PID 1), poison what a later build of another project installs (a shared
download cache), leave a setuid file where host users can reach it, or make the builder's own clean-up
delete the cache. Each was reproduced against the builder before its rebuild (main 0b370d5); each test here
checks, from the host, that nothing happened.
"""

from __future__ import annotations

import io
import os
import stat
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from buildkit import TARGET
from dists import PROJECTS_DIR, build_sdist, make_wheel
from hostile import Farm, last_line, marker, needs_bwrap

pytestmark = needs_bwrap

# Asks for flit_core in get_requires_for_build_wheel: the builder installs it into the build environment
# after the requires hook ran, and reads the environment again at the end.
WANTS_MORE = '    return ["flit_core"]'


def test_a_replaced_interpreter_never_runs_on_the_host(farm: Farm) -> None:
    ran = farm.base / marker("interpreter-ran-on-host")
    body = f"""\
    import os, sys
    script = f"#!/bin/sh\\necho pwned > {ran}\\nexec {{os.path.realpath(sys.executable)}} \\"$@\\"\\n"
    replaced = []
    for path in (sys.executable, os.path.join(os.path.dirname(sys.executable), "python3")):
        try:
            os.unlink(path)
            with open(path, "w") as handle:
                handle.write(script)
            os.chmod(path, 0o755)
            replaced.append(path)
        except OSError as exc:
            print(f"cannot replace {{path}}: {{exc}}", flush=True)
    print("REPLACED", replaced, flush=True)
{WANTS_MORE}
"""
    farm.backend_sdist("swap-python", "    pass", requires_body=body)

    farm.built_wheel("swap-python")

    log = farm.build_log("swap-python")
    assert "Read-only file system" in log  # the build environment is read-only while the backend runs
    assert "REPLACED []" in log
    assert not ran.exists(), "a script the build wrote ran on the host"


def test_a_pth_file_of_a_build_requirement_never_runs_on_the_host(farm: Farm, tmp_path: Path) -> None:
    ran = farm.base / marker("pth-ran-on-host")
    # Python runs a .pth line that starts with "import" whenever it starts with this environment.
    line = f"import os; open({str(ran)!r}, 'w').write('pwned at ' + os.getcwd())\n"
    wheel = make_wheel(tmp_path, "pthbomb", "1.0", {"pthbomb.pth": line.encode(), "pthbomb_mod.py": b""})
    farm.publish_wheel("pthbomb", wheel)
    farm.backend_sdist("uses-pthbomb", "    pass", requires=("pthbomb",), requires_body=WANTS_MORE)

    farm.built_wheel("uses-pthbomb")

    log = farm.build_log("uses-pthbomb")
    assert "pthbomb-1.0-py3-none-any.whl sha256" in log  # it was installed into the build environment
    assert not ran.exists(), f"a build requirement's .pth ran on the host: {ran.read_text()}"


def test_no_secret_is_in_any_process_the_build_can_see(farm: Farm, monkeypatch: pytest.MonkeyPatch) -> None:
    secret = marker("ADMIN-TOKEN")
    monkeypatch.setenv("WHEELFARM_ADMIN_TOKEN", secret)  # the proxy's environment, as `make serve` runs it
    body = f"""\
    import os
    found = []
    for pid in [p for p in os.listdir("/proc") if p.isdigit()]:
        for part in ("environ", "cmdline"):
            try:
                with open(f"/proc/{{pid}}/{{part}}", "rb") as handle:
                    if {secret.encode()!r} in handle.read():
                        found.append(f"/proc/{{pid}}/{{part}}")
            except OSError as exc:
                print(f"/proc/{{pid}}/{{part}}: {{exc}}", flush=True)
    print("PROCESSES", sorted(p for p in os.listdir("/proc") if p.isdigit()), flush=True)
    print("PID1", open("/proc/1/cmdline", "rb").read().replace(b"\\0", b" "), flush=True)
    if found:
        raise RuntimeError("SECRET FOUND in " + ", ".join(found))
    raise RuntimeError("no secret in any process")
"""
    farm.backend_sdist("proc-snoop", body)
    workers: list[bytes] = []
    with ThreadPoolExecutor(1) as pool:
        outcome = pool.submit(farm.failed_build, "proc-snoop")
        while not outcome.done():  # the worker's own environment, read from the host while it runs
            workers += _worker_environments()
            time.sleep(0.05)
        failure = outcome.result()

    assert "RuntimeError: no secret in any process" in failure.log, failure.log[-3000:]
    assert "SECRET FOUND" not in failure.log
    assert "bwrap" not in last_line(failure.log, "PID1 ")  # PID 1 is our frontend, not bubblewrap
    assert workers, "no build worker was seen: the test proved nothing"
    assert not any(secret.encode() in environ for environ in workers), "the worker holds the admin token"


def _worker_environments() -> list[bytes]:
    found = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            if b"builder.worker" in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(Path(f"/proc/{pid}/environ").read_bytes())
        except OSError:
            continue
    return found


def _descendants(root: int) -> list[int]:
    """Processes below ``root`` (the test's own: other test runs on the machine are not ours to judge)."""
    parents: dict[int, int] = {}
    for entry in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            parents[int(entry)] = int(Path(f"/proc/{entry}/stat").read_text().rpartition(")")[2].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    found, frontier = [], [root]
    while frontier:
        current = frontier.pop()
        children = [pid for pid, parent in parents.items() if parent == current]
        found += children
        frontier += children
    return found


def test_one_build_cannot_change_what_a_later_build_of_another_project_installs(
    farm: Farm, tmp_path: Path
) -> None:
    injected = marker("INJECTED")
    # Appended to flit_core/__init__.py where this build installed it: a later flit_core build would then
    # write a Summary of ours into its wheel's METADATA (and so into every client's install).
    payload = f"""
import zipfile as _zipfile
_original = _zipfile.ZipFile.writestr
def _writestr(self, name, data, *args, **kwargs):
    if str(getattr(name, "filename", name)).endswith("/METADATA"):
        data = (data if isinstance(data, bytes) else data.encode()) + b"Summary: {injected}\\n"
    return _original(self, name, data, *args, **kwargs)
_zipfile.ZipFile.writestr = _writestr
"""
    body = f"""\
    import os, sys, flit_core
    results = []
    targets = [flit_core.__file__]
    # The copy each import path of this interpreter holds (what a later build imports), and every copy on
    # every mount this build can write to, wherever it is: each read-write mount is walked on its own and
    # no walk enters another mount. Walking all of / (read-only /usr and a global site-packages of 90,000
    # files) took the hook past its time limit on a loaded machine, and a read-only file cannot be changed.
    for path in sys.path:
        if path and os.path.isfile(os.path.join(path, "flit_core", "__init__.py")):
            targets.append(os.path.join(path, "flit_core", "__init__.py"))
    mounts, writable = set(), set()
    with open("/proc/self/mountinfo") as info:
        for line in info:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            mounts.add(point)
            if "rw" in fields[5].split(",") and not point.startswith(("/proc", "/sys", "/dev")):
                writable.add(point)
    print("WRITABLE", sorted(writable), flush=True)
    for top in sorted(writable):
        for folder, dirs, names in os.walk(top):
            dirs[:] = [d for d in dirs if os.path.join(folder, d) not in mounts]
            if folder.endswith("/flit_core") and "__init__.py" in names:
                targets.append(os.path.join(folder, "__init__.py"))
    for path in sorted(set(targets)):
        try:
            with open(path, "a") as handle:  # in place: a hard link would carry it to every other copy
                handle.write({payload!r})
            results.append(f"poisoned {{path}}")
        except OSError as exc:
            results.append(f"{{path}}: {{exc}}")
    print("POISON", results, flush=True)
"""
    farm.backend_sdist("poisoner", body, requires=("flit_core",))
    farm.built_wheel("poisoner")
    victim = build_sdist(PROJECTS_DIR / "tinypure", "7.7", tmp_path)
    farm.publish("tinypure", victim)

    wheel = farm.built_wheel("tinypure")

    log = farm.build_log("poisoner")
    assert "Read-only file system" in last_line(log, "POISON ")
    with zipfile.ZipFile(io.BytesIO(wheel.content)) as archive:
        metadata = archive.read("tinypure-7.7.dist-info/METADATA").decode()
    assert injected not in metadata, "code of one build ran in another project's build"


def test_no_setuid_file_and_nothing_owned_by_root_appears_on_the_host(farm: Farm) -> None:
    body = """\
    import os, shutil, sys, time
    results = []
    shutil.copyfile(os.path.realpath(sys.executable), "suid-python")
    for mode in (0o4755, 0o2755):
        try:
            os.chmod("suid-python", mode)
            results.append(f"chmod {oct(mode)}: {oct(os.stat('suid-python').st_mode)}")
        except OSError as exc:
            results.append(f"chmod {oct(mode)}: {exc}")
    try:
        os.close(os.open("created-suid", os.O_CREAT | os.O_WRONLY, 0o4755))
        results.append(f"open 0o4755: {oct(os.stat('created-suid').st_mode)}")
    except OSError as exc:
        results.append(f"open 0o4755: {exc}")
    print("SUID", results, flush=True)
    time.sleep(3)  # long enough for the test to look at the work folder from the host
"""
    farm.backend_sdist("suid-maker", body)
    special: set[str] = set()
    root_owned: set[str] = set()
    with ThreadPoolExecutor(1) as pool:
        outcome = pool.submit(farm.built_wheel, "suid-maker")
        while not outcome.done():
            for folder, _, names in os.walk(farm.work):
                for name in names:
                    path = os.path.join(folder, name)
                    try:
                        info = os.lstat(path)
                    except OSError:
                        continue
                    if info.st_mode & (stat.S_ISUID | stat.S_ISGID):
                        special.add(path)
                    if os.geteuid() == 0 and info.st_uid == 0 and "/tree/" in path:
                        root_owned.add(path)
            time.sleep(0.1)
        outcome.result()

    log = farm.build_log("suid-maker")
    results = last_line(log, "SUID ")
    assert results.count("Operation not permitted") == 3, results
    assert special == set(), f"setuid or setgid files on the host: {sorted(special)}"
    assert root_owned == set(), f"files a build made belong to root on the host: {sorted(root_owned)[:5]}"


@pytest.mark.parametrize(
    "answer",
    [
        "{wheel}",  # a right name, but never written
        "../../{wheel}",
        "/tmp/{wheel}",
        "../../..",
        "/etc/passwd",
    ],
)
def test_a_backend_that_lies_about_its_wheel_fails_and_deletes_nothing(farm: Farm, answer: str) -> None:
    project = marker("liar").lower()
    sentinel = farm.cache / marker("sentinel")
    sentinel.write_text("still here")
    before = sorted(p.name for p in farm.cache.iterdir())
    wheel = f"{project.replace('-', '_')}-1.0-py3-none-any.whl"
    body = f"""\
    return {answer.format(wheel=wheel)!r}
"""
    farm.backend_sdist(project, body)
    link = farm.pending_url(project)

    failure = farm.failed_build(project)

    assert sentinel.exists(), "the builder deleted files of the cache"
    assert set(before) <= {p.name for p in farm.cache.iterdir()}
    assert failure.phase in ("build", "inspect")
    # The failure is remembered: no build link any more, and the same link answers the same 422 at once.
    page = httpx.get(f"{farm.proxy.url}/t/{TARGET}/simple/{project}/?format=json", timeout=30).json()
    assert not any(e.get("_wheelfarm", {}).get("pending") for e in page["files"])
    started = time.monotonic()
    again = httpx.get(link, timeout=30)
    assert again.status_code == 422
    assert time.monotonic() - started < 2


def test_the_builder_runs_no_build_code_as_root(farm: Farm) -> None:
    """Host uid of the sandboxed processes: never 0, whatever user the proxy runs as."""
    body = """\
    import os, time
    with open("/build/uid-probe", "w") as handle:
        handle.write(str(os.getuid()))
    time.sleep(2)
"""
    farm.backend_sdist("uid-probe", body)
    owners: set[int] = set()
    with ThreadPoolExecutor(1) as pool:
        outcome = pool.submit(farm.built_wheel, "uid-probe")
        while not outcome.done():
            owners |= _sandboxed_uids()
            time.sleep(0.05)
        outcome.result()

    assert owners, "no sandboxed process was seen: the test proved nothing"
    assert 0 not in owners, "build code ran as root on the host"
    if os.geteuid() != 0:
        assert owners == {os.geteuid()}


def _sandboxed_uids() -> set[int]:
    """Host uids of this test run's processes running our frontend in a sandbox (/wheelfarm/frontend.py)."""
    uids = set()
    for pid in _descendants(os.getpid()):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if argv[1:2] != [b"/wheelfarm/frontend.py"]:
                continue
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("Uid:"):
                uids.add(int(line.split()[2]))  # effective uid, as the host sees it
    return uids


def test_folders_a_build_made_read_only_are_removed_with_the_rest(farm: Farm) -> None:
    """As the proxy's own user (the Docker image, the second CI pass), the build's files are the proxy
    user's too, and a build may take write or read access from its own folders: they still go."""
    body = """\
    import os
    for folder, mode in (("/build/home/ro", 0o555), ("/build/home/none", 0o000), ("/tmp/ro", 0o500)):
        os.makedirs(folder + "/inner")
        with open(folder + "/inner/file", "w") as handle:
            handle.write("x")
        os.chmod(folder + "/inner", mode)
        os.chmod(folder, mode)
"""
    farm.backend_sdist("locked-folders", body)

    farm.built_wheel("locked-folders")  # and its work folder is gone (Farm.built_wheel checks)


def test_a_slow_upstream_cannot_hold_the_builders(farm: Farm) -> None:
    """sdists that trickle in are fetched outside the build slots, within the time limit."""
    slow = ["slow-sdist-a", "slow-sdist-b"]
    for project in slow:
        sdist = farm.backend_sdist(project, "    pass")
        farm.index.slow_files[sdist.name] = 20.0  # a chunk every 20 s: under the read timeout (30 s)
    farm.backend_sdist("prompt-sdist", "    pass")
    with ThreadPoolExecutor(2) as pool:
        trickling = [pool.submit(farm.build, project) for project in slow]
        time.sleep(1.0)  # both are fetching now
        started = time.monotonic()
        farm.built_wheel("prompt-sdist")
        prompt = time.monotonic() - started
        outcomes = [future.result() for future in trickling]

    assert prompt < 6, f"a build waited {prompt:.1f} s behind sdists still downloading"
    for outcome in outcomes:
        assert outcome.status_code == 422
        assert "wheel build failed in fetch" in outcome.text
