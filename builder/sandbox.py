"""The bubblewrap sandbox every step that touches an sdist's code or files runs in, and its limits.

Inside: a read-only root with /usr, the target interpreter and our tools read-only, only the folders a
step is given writable, a private /tmp and /dev/shm sized to the output limit, no network (a fresh network
namespace with nothing but its own loopback), its own PID namespace where the step itself is PID 1 (no
bubblewrap helper a build could steer), its own user namespace as uid 65534 mapped to an unprivileged host
uid (the build user when the proxy runs as root, the proxy's own user otherwise), no capabilities, no new
privileges, no further user namespaces, and the seccomp filter of builder/seccomp.py. Every process of it,
bubblewrap included, starts from an empty environment.

Limits: wall-clock time (everything is killed), address space, CPU time, processes (a pids cgroup as root,
RLIMIT_NPROC otherwise), size of any one file, and the bytes the build holds on disk (builder/workdir.py
counts them every half second and once more at the end; counting errors count as over the limit).
Processes die with the worker (PR_SET_PDEATHSIG, bubblewrap's --die-with-parent, and PID 1's namespace).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from builder import launch, seccomp
from builder.jobs import Limits
from builder.workdir import BuildFolder, Uncountable, descendants, hostile_bytes, neutralize

BUILD_ROOT = "/build"  # the tree: fixed build path, part of reproducible builds
ENV_ROOT = "/env"  # the build environment
TOOLS_ROOT = "/wheelfarm"  # our in-sandbox scripts, read-only; their host path stays private
WHEELS_ROOT = "/wheels"  # build requirement wheels, read-only
STAGE = "/tmp/.wheelfarm-sources"  # where the launcher binds host folders for a build user (root only)
SANDBOX_UID = 65534
_CGROUP_ROOTS = (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup"))
_WATCH_SECONDS = 0.5
_RESULT_LIMIT = 1 << 20


class SandboxUnavailable(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Mount:
    host: Path
    seen_as: str
    writable: bool = False


@dataclass(frozen=True, slots=True)
class Step:
    """One command in the sandbox: what it sees, its environment, and how long it may take."""

    command: Sequence[str]
    mounts: Sequence[Mount]
    environment: Mapping[str, str]
    cwd: str
    timeout: float


@dataclass(frozen=True, slots=True)
class RunOutcome:
    returncode: int
    timed_out: bool = False
    output_exceeded: bool = False
    uncountable: str = ""  # why the output could not be measured (counts as exceeded)
    result: bytes = b""  # what the step wrote to its result descriptor ($WHEELFARM_RESULT_FD)

    @property
    def ok(self) -> bool:
        return self.returncode == 0 and not self.timed_out and not self.output_exceeded


@dataclass(eq=False)
class Log:
    """The build log: the worker's notes, and the steps' output up to a cap (a build cannot fill the disk
    through its log, nor rewrite what is already there: it only ever holds the write end of a pipe)."""

    path: Path
    limit: int
    started: float = field(default_factory=time.time)
    _written: int = 0
    _dropped: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def note(self, text: str) -> None:
        self._append(f"[{time.time() - self.started:7.2f}s] {text}\n".encode(errors="replace"))

    def output(self, data: bytes) -> None:
        with self._lock:
            room = max(0, self.limit - self._written)
            kept, self._dropped = data[:room], self._dropped + max(0, len(data) - room)
            self._written += len(kept)
        if kept:
            self._append(kept)

    def close_output(self) -> None:
        with self._lock:
            dropped, self._dropped = self._dropped, 0
        if dropped:
            self.note(f"[{dropped} more bytes of output not kept: the log limit is {self.limit} bytes]")

    def _append(self, data: bytes) -> None:
        with self._lock, self.path.open("ab") as handle:
            handle.write(data)


def bwrap_path(configured: str = "") -> str | None:
    if configured:
        return configured if os.access(configured, os.X_OK) else None
    return shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin:" + os.environ.get("PATH", ""))


class Sandbox:
    """Runs the steps of one build (one instance per build, in the worker)."""

    def __init__(
        self,
        folder: BuildFolder,
        limits: Limits,
        log: Log,
        build_user: tuple[int, int] | None,
        bwrap: str = "",
    ) -> None:
        found = bwrap_path(bwrap)
        if found is None:
            raise SandboxUnavailable(f"bubblewrap ({bwrap or 'bwrap'}) is not installed")
        bwrap = found
        self._bwrap = bwrap
        self._folder = folder
        self._limits = limits
        self._log = log
        self._build_user = build_user
        self._filter = seccomp.filter_program()

    def run(self, step: Step) -> RunOutcome:
        mounts = sorted(step.mounts, key=lambda m: m.seen_as.count("/"))
        sources = [mount.host for mount in mounts]
        staged = self._build_user is not None
        seen = [Path(f"{STAGE}/{n}") if staged else mount.host for n, mount in enumerate(mounts)]
        filter_read, filter_write = os.pipe()
        result_read, result_write = os.pipe()
        output_read, output_write = os.pipe()
        os.write(filter_write, self._filter)  # about 1 KiB: fits the pipe
        os.close(filter_write)
        environment = {**step.environment, "WHEELFARM_RESULT_FD": str(result_write)}
        argv = self._argv(step, list(zip(seen, mounts, strict=True)), environment, filter_read)
        cgroup = _make_pids_cgroup(self._limits.processes, self._folder.path.name)
        spec = {
            "argv": argv,
            "sources": [str(source) for source in sources],
            "stage": STAGE,
            "uid": self._build_user[0] if self._build_user else None,
            "gid": self._build_user[1] if self._build_user else None,
            "cgroup": str(cgroup) if cgroup else None,
            "rlimits": self._rlimits(cgroup is None),
            "parent": os.getpid(),
        }
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", launch.__file__, _json(spec)],
                stdin=subprocess.DEVNULL,
                stdout=output_write,
                stderr=output_write,
                pass_fds=(filter_read, result_write),
                env={},
                start_new_session=True,
            )
        finally:
            for fd in (filter_read, result_write, output_write):
                os.close(fd)
        output = _Pump(output_read, self._log.output)
        result = _Pump(result_read, None, limit=_RESULT_LIMIT)
        watch = _Watch(self._folder, self._limits.output_bytes, process, cgroup)
        timed_out = False
        try:
            process.wait(timeout=step.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill(process, cgroup)
            watch.stop()
            output.join()
            result.join()
            _remove_cgroup(cgroup)
        self._log.close_output()
        uncountable = watch.uncountable
        if not uncountable:
            try:
                neutralize(self._folder)
                if hostile_bytes(self._folder) > self._limits.output_bytes:
                    watch.exceeded = True
            except Uncountable as exc:
                uncountable = str(exc)
        return RunOutcome(
            process.returncode,
            timed_out=timed_out,
            output_exceeded=watch.exceeded or bool(uncountable),
            uncountable=uncountable,
            result=result.data,
        )

    def _argv(
        self, step: Step, mounts: list[tuple[Path, Mount]], environment: Mapping[str, str], filter_fd: int
    ) -> list[str]:
        args = [self._bwrap, "--unshare-all", "--unshare-user", "--disable-userns"]
        args += ["--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID)]
        args += ["--die-with-parent", "--new-session", "--as-pid-1", "--cap-drop", "ALL"]
        args += ["--seccomp", str(filter_fd)]
        args += ["--ro-bind", "/usr", "/usr"]
        for name in ("bin", "lib", "lib32", "lib64", "sbin"):
            host = Path("/") / name
            if host.is_symlink():
                args += ["--symlink", os.readlink(host), f"/{name}"]
            elif host.is_dir():
                args += ["--ro-bind", str(host), f"/{name}"]
        for etc in ("/etc/ld.so.cache", "/etc/ld.so.conf", "/etc/ld.so.conf.d", "/etc/alternatives"):
            if os.path.exists(etc):
                args += ["--ro-bind", etc, etc]
        # Memory-backed scratch space: sized to the same budget as the work folder.
        scratch = str(self._limits.output_bytes)
        args += ["--proc", "/proc", "--dev", "/dev", "--size", scratch, "--tmpfs", "/tmp"]
        args += ["--size", scratch, "--tmpfs", "/dev/shm"]
        for source, mount in mounts:
            args += ["--bind" if mount.writable else "--ro-bind", str(source), mount.seen_as]
        args += ["--remount-ro", "/", "--chdir", step.cwd, "--clearenv"]
        for key, value in sorted(environment.items()):
            args += ["--setenv", key, value]
        return [*args, "--", *step.command]

    def _rlimits(self, count_processes: bool) -> dict[str, int]:
        limits = self._limits
        cpu = int(limits.timeout_seconds) + 5
        values = {
            "RLIMIT_AS": limits.memory_bytes,
            "RLIMIT_FSIZE": limits.file_size_bytes,
            "RLIMIT_CPU": cpu,
            "RLIMIT_CORE": 0,
        }
        if count_processes:
            values["RLIMIT_NPROC"] = limits.processes
        return values


class _Pump(threading.Thread):
    """Drain one pipe: to a sink, or into memory up to a limit (the rest is read and dropped)."""

    def __init__(self, fd: int, sink: object, limit: int = 0) -> None:
        super().__init__(daemon=True)
        self._fd, self._sink, self._limit = fd, sink, limit
        self.data = b""
        self.start()

    def run(self) -> None:
        kept = bytearray()
        try:
            while chunk := os.read(self._fd, 65536):
                if callable(self._sink):
                    self._sink(chunk)
                elif len(kept) < self._limit:
                    kept += chunk[: self._limit - len(kept)]
        finally:
            os.close(self._fd)
            self.data = bytes(kept)


class _Watch(threading.Thread):
    """Counts what the build holds on disk every half second and stops it past the limit."""

    def __init__(
        self, folder: BuildFolder, limit: int, process: subprocess.Popen[bytes], cgroup: Path | None
    ) -> None:
        super().__init__(daemon=True)
        self._folder, self._limit, self._process, self._cgroup = folder, limit, process, cgroup
        self._halt = threading.Event()
        self.exceeded = False
        self.uncountable = ""
        self.start()

    def run(self) -> None:
        while not self._halt.wait(_WATCH_SECONDS):
            try:
                processes = _cgroup_pids(self._cgroup) if self._cgroup else descendants(self._process.pid)
                if hostile_bytes(self._folder, processes) > self._limit:
                    self.exceeded = True
            except Uncountable as exc:
                self.uncountable = str(exc)
            if self.exceeded or self.uncountable:
                _kill(self._process, self._cgroup)
                return

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _kill(process: subprocess.Popen[bytes], cgroup: Path | None) -> None:
    """Kill the launcher (bubblewrap after exec): PID 1 of the sandbox dies with it, and so does its
    namespace; the cgroup catches anything else."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            process.kill()
    for pid in _cgroup_pids(cgroup):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def _json(value: object) -> str:
    import json

    return json.dumps(value)


def _make_pids_cgroup(limit: int, build: str) -> Path | None:
    """A pids cgroup for this step, when we may make one (root, cgroup v1 pids or v2 with pids enabled).
    Named after the build folder, so start-up can find the cgroups a crashed run left."""
    if os.geteuid() != 0:
        return None
    for root in _CGROUP_ROOTS:
        if not (root / "cgroup.procs").exists() or not os.access(root, os.W_OK):
            continue
        if root == Path("/sys/fs/cgroup") and "pids" not in _read(root / "cgroup.subtree_control"):
            continue
        group = root / f"wheelfarm-{build}-{uuid.uuid4().hex[:8]}"
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
    group = _make_pids_cgroup(16, "probe")
    _remove_cgroup(group)
    return group is not None or os.geteuid() != 0


def leftover_cgroups(build: str) -> list[Path]:
    found: list[Path] = []
    for root in _CGROUP_ROOTS:
        with contextlib.suppress(OSError):
            found += [group for group in root.glob(f"wheelfarm-{build}-*") if group.is_dir()]
    return found


def _cgroup_pids(group: Path | None) -> list[int]:
    if group is None:
        return []
    return [int(pid) for pid in _read(group / "cgroup.procs").split() if pid.isdigit()]


def _remove_cgroup(group: Path | None) -> None:
    if group is None:
        return
    for _ in range(100):
        for pid in _cgroup_pids(group):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        try:
            group.rmdir()
            return
        except OSError:
            time.sleep(0.05)


def remove_leftover_cgroups(build: str) -> None:
    for group in leftover_cgroups(build):
        _remove_cgroup(group)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
