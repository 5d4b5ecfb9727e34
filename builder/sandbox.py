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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from builder import launch, seccomp
from builder.jobs import Limits
from builder.workdir import BuildFolder, CountRaced, Uncountable, descendants, free_bytes, measure, neutralize

BUILD_ROOT = "/build"  # the tree: fixed build path, part of reproducible builds
ENV_ROOT = "/env"  # the build environment
TOOLS_ROOT = "/wheelfarm"  # our in-sandbox scripts, read-only; their host path stays private
WHEELS_ROOT = "/wheels"  # build requirement wheels, read-only
STAGE = "/tmp/.wheelfarm-sources"  # where the launcher binds host folders for a build user (root only)
SANDBOX_UID = 65534
_V1_ROOT = Path("/sys/fs/cgroup")  # v1: one folder per controller under it; v2: the unified tree itself
_WATCH_SECONDS = 0.5
_RACED_COUNTS = 20  # 10 s of a tree that changes under every count
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
    files_exceeded: bool = False
    not_started: str = ""  # the sandbox itself could not start (the host's trouble, not the package's)
    tail: str = ""  # the step's last lines of output (the cause of a failure, usually)
    host_trouble: str = ""  # the host failed the step (its disk is nearly full): not the package's fault

    @property
    def ok(self) -> bool:
        breached = self.timed_out or self.output_exceeded or self.files_exceeded
        return self.returncode == 0 and not breached and not self.not_started and not self.host_trouble


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
        # Scratch space is the build's own, on disk, in its tree: counted with everything else it writes
        # (a tmpfs would be memory nobody counts, and its inodes too).
        scratch = [
            Mount(self._folder.tree / "tmp", "/tmp", writable=True),
            Mount(self._folder.tree / "shm", "/dev/shm", writable=True),
        ]
        mounts = sorted([*scratch, *step.mounts], key=lambda m: m.seen_as.count("/"))
        sources = [mount.host for mount in mounts]
        staged = self._build_user is not None
        seen = [Path(f"{STAGE}/{n}") if staged else mount.host for n, mount in enumerate(mounts)]
        filter_read, filter_write = os.pipe()
        result_read, result_write = os.pipe()
        output_read, output_write = os.pipe()
        status_read, status_write = os.pipe()  # bubblewrap says here when the step's process started
        os.write(filter_write, self._filter)  # about 1 KiB: fits the pipe
        os.close(filter_write)
        environment = {**step.environment, "WHEELFARM_RESULT_FD": str(result_write)}
        argv = self._argv(step, list(zip(seen, mounts, strict=True)), environment, filter_read, status_write)
        cgroups = _make_cgroups(self._limits, self._folder.path.name)
        spec = {
            "argv": argv,
            "sources": [str(source) for source in sources],
            "stage": STAGE,
            "uid": self._build_user[0] if self._build_user else None,
            "gid": self._build_user[1] if self._build_user else None,
            "cgroups": [str(group) for group in cgroups.groups],
            "rlimits": self._rlimits(cgroups.procs is None),
            "parent": os.getpid(),
        }
        try:
            process = subprocess.Popen(
                [sys.executable, "-I", "-S", launch.__file__, _json(spec)],
                stdin=subprocess.DEVNULL,
                stdout=output_write,
                stderr=output_write,
                pass_fds=(filter_read, result_write, status_write),
                env={},
                start_new_session=True,
            )
        finally:
            for fd in (filter_read, result_write, output_write, status_write):
                os.close(fd)
        tail = _Tail(self._log.output)
        output = _Pump(output_read, tail)
        result = _Pump(result_read, None, limit=_RESULT_LIMIT)
        status = _Pump(status_read, None, limit=_RESULT_LIMIT)
        watch = _Watch(self._folder, self._limits, process, cgroups)
        timed_out = False
        try:
            process.wait(timeout=step.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            _kill(process, cgroups)
            watch.stop()
            for pump in (output, result, status):
                pump.join(timeout=30)
            _remove_cgroups(cgroups)
        self._log.close_output()
        if not (watch.uncountable or watch.exceeded or watch.too_many_files):
            # A last look: a build can write a lot between two looks of the watch and end before the next.
            try:
                neutralize(self._folder)
            except Uncountable as exc:
                watch.uncountable = str(exc)
            watch.check(final=True)
        uncountable = watch.uncountable
        started = b'"child-pid"' in status.data
        return RunOutcome(
            process.returncode,
            timed_out=timed_out,
            output_exceeded=watch.exceeded or bool(uncountable),
            files_exceeded=watch.too_many_files,
            uncountable=uncountable,
            result=result.data,
            not_started="" if started or timed_out else (tail.last_line() or f"status {process.returncode}"),
            tail=tail.text(),
            host_trouble=watch.host_trouble,
        )

    def _argv(
        self,
        step: Step,
        mounts: list[tuple[Path, Mount]],
        environment: Mapping[str, str],
        filter_fd: int,
        status_fd: int,
    ) -> list[str]:
        args = [self._bwrap, "--unshare-all", "--unshare-user", "--disable-userns"]
        args += ["--json-status-fd", str(status_fd)]
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
        args += ["--proc", "/proc", "--dev", "/dev"]
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


class _Tail:
    """Passes output on and keeps its last line (bubblewrap's or the launcher's complaint, if it failed)."""

    def __init__(self, sink: Callable[[bytes], None]) -> None:
        self._sink = sink
        self._last = b""

    def __call__(self, chunk: bytes) -> None:
        self._sink(chunk)
        self._last = (self._last + chunk)[-8192:]

    def text(self) -> str:
        return self._last.decode(errors="replace")

    def last_line(self) -> str:
        lines = [line.strip() for line in self._last.decode(errors="replace").splitlines() if line.strip()]
        return lines[-1][:500] if lines else ""


class _Watch(threading.Thread):
    """Every half second: the bytes and files the build holds, and the free space left on the disk of the
    work folder; the build is stopped past a limit."""

    def __init__(
        self, folder: BuildFolder, limits: Limits, process: subprocess.Popen[bytes], cgroups: _Cgroups
    ) -> None:
        super().__init__(daemon=True)
        self._folder, self._limits, self._process, self._cgroups = folder, limits, process, cgroups
        self._halt = threading.Event()
        self.exceeded = False
        self.too_many_files = False
        self.uncountable = ""
        self.host_trouble = ""
        self._raced = 0  # counts in a row that the tree changed under
        self.start()

    def run(self) -> None:
        while not self._halt.wait(_WATCH_SECONDS):
            self.check(final=False)
            if self.exceeded or self.too_many_files or self.uncountable or self.host_trouble:
                _kill(self._process, self._cgroups)
                return

    def check(self, *, final: bool) -> None:
        limits = self._limits
        try:
            processes = [] if final else (self._cgroups.pids() or descendants(self._process.pid))
            usage = measure(self._folder, processes)
            self._raced = 0
            if usage.bytes > limits.output_bytes:
                self.exceeded = True
            elif usage.files > limits.files:
                self.too_many_files = True
        except CountRaced as exc:
            # A moving tree is normal for a moment (an installer renaming folders into place); one that
            # never holds still long enough to be counted is a build hiding what it writes.
            self._raced += 1
            if final or self._raced >= _RACED_COUNTS:
                self.uncountable = f"{exc.strerror} ({self._raced} counts in a row)"
        except Uncountable as exc:
            self.uncountable = str(exc)
        free = free_bytes(self._folder.path)
        if free is not None and free < limits.min_free_bytes:
            self.host_trouble = (
                f"the disk of the work folder has only {free >> 20} MiB free "
                f"(builds stop below {limits.min_free_bytes >> 20} MiB)"
            )

    def stop(self) -> None:
        self._halt.set()
        self.join()


def _kill(process: subprocess.Popen[bytes], cgroups: _Cgroups) -> None:
    """Kill the launcher (bubblewrap after exec): PID 1 of the sandbox dies with it, and so does its
    namespace; the cgroups catch anything else."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            process.kill()
    for pid in cgroups.pids():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(timeout=10)


def _json(value: object) -> str:
    import json

    return json.dumps(value)


@dataclass(frozen=True, slots=True)
class _Cgroups:
    """The step's cgroups (root only): processes counted and capped per build, memory capped per build
    (RLIMIT_AS alone caps each process, not their sum), everything killable at once."""

    groups: tuple[Path, ...] = ()

    @property
    def procs(self) -> Path | None:
        return self.groups[0] if self.groups else None

    def pids(self) -> list[int]:
        found: set[int] = set()
        for group in self.groups:
            found.update(int(pid) for pid in _read(group / "cgroup.procs").split() if pid.isdigit())
        return sorted(found)


def _make_cgroups(limits: Limits, build: str) -> _Cgroups:
    """pids and memory cgroups for this step, where we may make them (root; cgroup v1 controllers, or v2
    with them enabled). Named after the build folder, so start-up can find those a crashed run left."""
    if os.geteuid() != 0:
        return _Cgroups()
    name = f"wheelfarm-{build}-{uuid.uuid4().hex[:8]}"
    settings = {
        "pids": {"pids.max": str(limits.processes)},
        "memory": {"memory.limit_in_bytes": str(limits.memory_bytes)},
    }
    made: list[Path] = []
    if (_V1_ROOT / "pids" / "cgroup.procs").exists():
        for controller, files in settings.items():
            group = _new_group(_V1_ROOT / controller / name, files)
            if group is not None:
                made.append(group)
    elif "pids" in _read(_V1_ROOT / "cgroup.subtree_control"):
        files = {"pids.max": str(limits.processes)}
        if "memory" in _read(_V1_ROOT / "cgroup.subtree_control"):
            files |= {"memory.max": str(limits.memory_bytes), "memory.swap.max": "0"}
        group = _new_group(_V1_ROOT / name, files)
        if group is not None:
            made.append(group)
    return _Cgroups(tuple(made))


def _new_group(group: Path, files: Mapping[str, str]) -> Path | None:
    try:
        group.mkdir()
        for filename, value in files.items():
            (group / filename).write_text(value)
    except OSError:
        _remove_group(group)
        return None
    return group


def pids_limit_available() -> bool:
    groups = _make_cgroups(Limits(processes=16), "probe")
    _remove_cgroups(groups)
    return bool(groups.groups) or os.geteuid() != 0


def leftover_cgroups(build: str) -> list[Path]:
    found: list[Path] = []
    for root in (_V1_ROOT, *(_V1_ROOT / c for c in ("pids", "memory"))):
        with contextlib.suppress(OSError):
            found += [group for group in root.glob(f"wheelfarm-{build}-*") if group.is_dir()]
    return found


def _remove_cgroups(groups: _Cgroups) -> None:
    for group in groups.groups:
        _remove_group(group)


def _remove_group(group: Path) -> None:
    for _ in range(100):
        for pid in _read(group / "cgroup.procs").split():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pid), signal.SIGKILL)
        try:
            group.rmdir()
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.05)


def remove_leftover_cgroups(build: str) -> None:
    for group in leftover_cgroups(build):
        _remove_group(group)


def _read(path: Path) -> str:
    try:
        return path.read_text()
    except OSError:
        return ""
