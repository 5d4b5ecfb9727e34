"""The bubblewrap sandbox and resource limits for the parts of a build that run the sdist's code.

Inside: a read-only root with a read-only /usr and target interpreter, the work folder at the fixed path
/build (the only writable place besides a private, size-limited /tmp and /dev/shm), no network (a fresh
network namespace with nothing but its own loopback), no view of the proxy's cache, config or the host's
home folders, a clean environment. Limits: wall-clock time (the whole process group is killed), address
space, processes (a pids cgroup when we are root, RLIMIT_NPROC otherwise), size of any one file, and size of
the whole work folder (watched while it runs and checked once more when it ends).
"""

from __future__ import annotations

import contextlib
import os
import resource
import shutil
import signal
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from builder.jobs import Limits

BUILD_ROOT = "/build"  # fixed build path: part of reproducible builds
FRONTEND_ROOT = "/wheelfarm"  # our PEP 517 front end, read-only; its host path stays private
_CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))


class SandboxUnavailable(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class RunOutcome:
    returncode: int
    timed_out: bool = False
    output_exceeded: bool = False

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_exceeded


def bwrap_path() -> str | None:
    return shutil.which("bwrap")


def sandbox_command(
    command: Sequence[str],
    *,
    work: Path,
    read_only: Sequence[Path],
    environment: Mapping[str, str],
    cwd: str,
    limits: Limits,
    mounts: Mapping[Path, str] | None = None,
) -> list[str]:
    """``read_only`` folders appear at their own paths (venvs point at their interpreter by path);
    ``mounts`` maps more read-only host folders to the paths the sandbox sees them at."""
    bwrap = bwrap_path()
    if bwrap is None:
        raise SandboxUnavailable("bubblewrap (bwrap) is not installed")
    args = [bwrap, "--unshare-all", "--die-with-parent", "--new-session"]
    if os.geteuid() == 0:
        # As root, enter a user namespace as "nobody": no capabilities, no root-owned files writable.
        args += ["--unshare-user", "--uid", "65534", "--gid", "65534"]
    args += ["--ro-bind", "/usr", "/usr"]
    for name in ("bin", "lib", "lib32", "lib64", "sbin"):
        host = Path("/") / name
        if host.is_symlink():
            args += ["--symlink", os.readlink(host), f"/{name}"]
        elif host.is_dir():
            args += ["--ro-bind", str(host), f"/{name}"]
    for etc in (
        "/etc/ld.so.cache",
        "/etc/ld.so.conf",
        "/etc/ld.so.conf.d",
        "/etc/alternatives",
        "/etc/localtime",
    ):
        if os.path.exists(etc):
            args += ["--ro-bind", etc, etc]
    # Memory-backed scratch space counts against the same size budget as the work folder.
    scratch = str(limits.output_bytes)
    args += ["--proc", "/proc", "--dev", "/dev", "--size", scratch, "--tmpfs", "/tmp"]
    args += ["--size", scratch, "--tmpfs", "/dev/shm"]
    for path in read_only:
        args += ["--ro-bind", str(path), str(path)]
    for host_path, seen_as in sorted((mounts or {}).items()):
        args += ["--ro-bind", str(host_path), seen_as]
    args += ["--bind", str(work), BUILD_ROOT, "--remount-ro", "/", "--chdir", cwd, "--clearenv"]
    for key, value in sorted(environment.items()):
        args += ["--setenv", key, value]
    return [*args, "--", *command]


def run_limited(
    command: Sequence[str],
    *,
    log: BinaryIO,
    limits: Limits,
    watch: Path,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
) -> RunOutcome:
    """Run ``command`` with the limits, output appended to ``log``; kill its process group on a breach."""
    cgroup = _make_pids_cgroup(limits.processes)
    preexec = _limiter(limits, cgroup)
    process = subprocess.Popen(
        list(command),
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=cwd,
        env=dict(env) if env is not None else None,
        start_new_session=True,
        preexec_fn=preexec,
    )
    exceeded = threading.Event()
    stop = threading.Event()
    watcher = threading.Thread(
        target=_watch_size, args=(watch, limits.output_bytes, process, exceeded, stop), daemon=True
    )
    watcher.start()
    timed_out = False
    try:
        process.wait(timeout=limits.timeout_seconds)
    except subprocess.TimeoutExpired:
        timed_out = True
        _kill_group(process)
    finally:
        stop.set()
        watcher.join()
        _kill_group(process)  # leftovers of a build that exited early but left children behind
        _remove_cgroup(cgroup)
    # A last look: a build can write a lot between two looks of the watcher and end before the next one.
    if folder_size(watch) > limits.output_bytes:
        exceeded.set()
    return RunOutcome(process.returncode, timed_out=timed_out, output_exceeded=exceeded.is_set())


def _limiter(limits: Limits, cgroup: Path | None) -> Callable[[], None]:
    def apply() -> None:
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        elif os.geteuid() != 0:
            resource.setrlimit(resource.RLIMIT_NPROC, (limits.processes, limits.processes))
        resource.setrlimit(resource.RLIMIT_AS, (limits.memory_bytes, limits.memory_bytes))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_size_bytes, limits.file_size_bytes))
        cpu = int(limits.timeout_seconds) + 5
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _make_pids_cgroup(limit: int) -> Path | None:
    """A pids cgroup for this run, when we may make one (root, cgroup v1 pids or v2 with pids enabled)."""
    if os.geteuid() != 0:
        return None
    for root in _CGROUP_ROOTS:
        if not (root / "cgroup.procs").exists() or not os.access(root, os.W_OK):
            continue
        if root == Path("/sys/fs/cgroup") and "pids" not in _read(root / "cgroup.subtree_control"):
            continue
        group = root / f"wheelfarm-{uuid.uuid4().hex[:12]}"
        try:
            group.mkdir()
            (group / "pids.max").write_text(str(limit))
        except OSError:
            with contextlib.suppress(OSError):
                group.rmdir()
            continue
        return group
    return None


def pids_limit_available() -> bool:
    group = _make_pids_cgroup(16)
    _remove_cgroup(group)
    return group is not None or os.geteuid() != 0


def _remove_cgroup(group: Path | None) -> None:
    if group is None:
        return
    for _ in range(50):
        for pid in _read(group / "cgroup.procs").split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.05)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""


def _kill_group(process: subprocess.Popen[bytes]) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def _watch_size(
    folder: Path,
    limit: int,
    process: subprocess.Popen[bytes],
    exceeded: threading.Event,
    stop: threading.Event,
) -> None:
    while not stop.wait(0.5):
        if folder_size(folder) > limit:
            exceeded.set()
            _kill_group(process)
            return


def folder_size(folder: Path) -> int:
    """Bytes on disk under ``folder``. fwalk works with directory descriptors, so folders nested deeper
    than PATH_MAX are counted too (a path-based walk would have to skip them)."""
    total = 0
    with contextlib.suppress(OSError):
        for _, _, names, dir_fd in os.fwalk(folder, follow_symlinks=False):
            for name in names:
                with contextlib.suppress(OSError):
                    total += os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_blocks * 512
    return total
