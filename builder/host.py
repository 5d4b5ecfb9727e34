"""This machine as a builder: whether it can build, what it builds, and running one build in a worker.

A ``BuildHost`` checks at start-up that builds can run here (Linux, bubblewrap, free build uids, the
sandbox self-check), removes what a crashed run left, finds its interpreters once, and then runs builds in
worker processes (``builder.worker``), at most ``workers`` at a time, each in a fresh work folder that it
removes after the caller has copied out what it keeps. Where builds are queued, how records are kept and
who may build what are the build service's concern, not this module's.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import platform
import pwd
import re
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import structlog

from builder import confinement, selfcheck
from builder.interpreters import find_interpreter
from builder.jobs import MIN_PYTHON, BuildJob, Limits, Phase, TargetOffer, public_url
from builder.protocol import WorkerOrder, WorkerReport
from builder.sandbox import bwrap_path, remove_leftover_cgroups
from builder.tags import Target
from builder.users import build_user, host_root, mapped
from builder.workdir import (
    BuildFolder,
    leftover_folders,
    new_build_folder,
    remove_build_folder,
    stop_leftover_worker,
)

log = structlog.get_logger(__name__)

BUILDER_VERSION = "wheelfarm-builder/2"  # a failure recorded by an older builder is tried again
_OLD_LAYOUT = re.compile(r"^([0-9a-f]{16}-[a-z0-9_]+-\d+|jobs|\.frontend(-\d+)?)\Z")  # wheelfarm-builder/1
_PYTHONS = tuple(range(MIN_PYTHON[1], 15))  # CPython 3 minor versions looked for

Kept = TypeVar("Kept")


@dataclass(frozen=True, slots=True)
class HostSettings:
    work_root: Path
    index_url: str  # where builds install their build requirements from (the proxy's plain index)
    workers: int = 2
    limits: Limits = field(default_factory=Limits)
    build_uid: int = 1_900_000_000  # as root, slot N builds as uid and gid build_uid + N
    bwrap: str = ""  # the bubblewrap binary ("": found on the usual paths)
    interpreters: Mapping[str, str] = field(default_factory=dict)  # "3.12" -> path, before pyenv and PATH
    targets: tuple[str, ...] = ("*",)  # fnmatch patterns of the targets offered


class BuildHost:
    def __init__(self, settings: HostSettings) -> None:
        self.settings = settings
        self._interpreters: dict[int, Path] = {}  # minor version -> interpreter, found at start-up
        self._semaphore = asyncio.Semaphore(max(1, settings.workers))
        self._free_slots = list(range(max(1, settings.workers)))
        # Read once: platform.libc_ver() reads the interpreter binary, too slow for every page render.
        self._arch = platform.machine().lower()
        self._family = "manylinux" if platform.libc_ver()[0] == "glibc" else "musllinux"

    @property
    def offer(self) -> TargetOffer:
        """What this host builds (known once ``start`` has found its interpreters)."""
        pythons = tuple(sorted(self._interpreters))
        return TargetOffer(self._family, self._arch, pythons, self.settings.targets)

    async def start(self) -> str | None:
        """Prepare the host for builds; None when builds can run, else why they cannot."""
        self.settings.work_root.mkdir(parents=True, exist_ok=True)
        os.chmod(
            self.settings.work_root, 0o711
        )  # build users pass through to nothing: their folders are 0700
        self._interpreters = await asyncio.to_thread(self._find_interpreters)
        reason = self._why_disabled()
        if reason is not None:
            return reason
        try:
            await asyncio.to_thread(self._remove_leftovers)
        except OSError as exc:
            log.warning("leftovers_not_removed", error=str(exc))
        try:
            return await self._self_check()
        except Exception as exc:  # the check's own trouble: builds stay off, saying why
            return f"the sandbox self-check could not run: {exc!r}"

    def interpreter(self, target: Target) -> Path | None:
        major, minor = target.python
        return self._interpreters.get(minor) if major == 3 else None

    async def build(
        self,
        job: BuildJob,
        sdist: Path,
        keep: Callable[[WorkerReport, BuildFolder | None], Awaitable[Kept]],
        started: Callable[[], None] = lambda: None,
    ) -> Kept:
        """Build ``job`` from the verified ``sdist`` in a free slot (``started`` is called when one is
        taken); ``keep`` copies what it wants out of the work folder before the folder is removed."""
        async with self._semaphore:
            slot = self._free_slots.pop()
            started()
            try:
                report, folder = await self._run_worker(job, slot, sdist)
            finally:
                self._free_slots.append(slot)
        try:
            return await keep(report, folder)
        finally:
            if folder is not None:
                await self._remove(folder)

    def _find_interpreters(self) -> dict[int, Path]:
        found = {}
        for minor in _PYTHONS:
            path = find_interpreter(f"3.{minor}", self.settings.interpreters)
            if path is not None:
                found[minor] = path
        return found

    def _why_disabled(self) -> str | None:
        if platform.system() != "Linux":
            return "builders run on Linux only"
        if bwrap_path(self.settings.bwrap) is None:
            return "bubblewrap (bwrap) is not installed: install it (Debian: apt-get install bubblewrap)"
        if not self._interpreters:
            return "no CPython interpreter for any target was found (see [builder] interpreters)"
        if host_root():
            for slot in range(self.settings.workers):
                uid = self.settings.build_uid + slot
                if not mapped(uid):
                    return (
                        f"the proxy runs as root but build uid {uid} is not mapped in its user namespace "
                        "(/proc/self/uid_map): set [builder] build_uid to a mapped, unused range"
                    )
                try:
                    owner = pwd.getpwuid(uid).pw_name
                except KeyError:
                    continue
                return (
                    f"build uid {uid} belongs to the user {owner!r}: set [builder] build_uid to a free range"
                )
        return None

    def _remove_leftovers(self) -> None:
        """Each leftover on its own: one that cannot be removed is logged and never stops the start-up."""
        root = self.settings.work_root
        for folder in leftover_folders(root):
            try:
                stopped = stop_leftover_worker(folder)
                remove_leftover_cgroups(folder.name)
                removed = remove_build_folder(root, folder)
            except OSError as exc:
                log.warning("leftover_build_not_removed", folder=folder.name, error=str(exc))
                continue
            log.info("leftover_build_removed", folder=folder.name, worker_stopped=stopped, removed=removed)
        for entry in root.iterdir():
            if _OLD_LAYOUT.match(entry.name) and entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)

    async def _self_check(self) -> str | None:
        """Build a tiny sdist end to end, for the running Python if there is one of it here."""
        minor = sys.version_info[1] if sys.version_info[1] in self._interpreters else min(self._interpreters)
        sdist = await asyncio.to_thread(selfcheck.write_sdist, self.settings.work_root / ".selfcheck")
        digest = await asyncio.to_thread(lambda: hashlib.sha256(sdist.read_bytes()).hexdigest())
        target = self.host_target(minor)
        job = BuildJob(selfcheck.NAME, selfcheck.VERSION, sdist.name, digest, sdist.as_uri(), target)
        started = time.monotonic()
        report, folder = await self._run_worker(job, 0, sdist)
        log_tail = await asyncio.to_thread(_log_tail, folder.log) if folder is not None else ""
        if folder is not None:
            await self._remove(folder)
        if not report.ok:
            detail = f" ({log_tail})" if log_tail and log_tail not in report.error else ""
            reason = f"the sandbox self-check failed in {report.phase}: {report.error}{detail}"
            hints = await asyncio.to_thread(confinement.explain) if "bwrap:" in reason else ""
            return f"{reason}; {hints}" if hints else reason
        log.info("builder_self_check_passed", seconds=round(time.monotonic() - started, 2), target=target.id)
        return None

    def host_target(self, minor: int) -> Target:
        libc_major, libc_minor = _glibc_version()
        return Target((3, minor), f"{self._family}_{libc_major}_{libc_minor}_{self._arch}")

    async def _remove(self, folder: BuildFolder) -> None:
        """Remove a build's folder; a failure is logged (start-up tries again), never a client's 500."""
        try:
            # Whatever still runs in the build's cgroups (as root) is killed first: the sandbox dies with its
            # worker (PR_SET_PDEATHSIG), but a worker killed while it forked a launcher can leave one behind.
            await asyncio.to_thread(remove_leftover_cgroups, folder.path.name)
            removed = await asyncio.to_thread(remove_build_folder, self.settings.work_root, folder.path)
        except OSError as exc:
            removed = False
            log.warning("build_folder_not_removed", folder=folder.path.name, error=str(exc))
        if not removed:
            log.warning("build_folder_left", folder=folder.path.name)

    async def _run_worker(
        self, job: BuildJob, slot: int, sdist_path: Path
    ) -> tuple[WorkerReport, BuildFolder | None]:
        """Run one build in a worker process; the folder is this build's own (removed by the caller)."""
        settings = self.settings
        interpreter = self.interpreter(job.target)
        if interpreter is None:
            return WorkerReport.failure(
                Phase.ENVIRONMENT, f"no Python {job.target.python_version} on this builder"
            ), None
        folder = await asyncio.to_thread(
            new_build_folder, settings.work_root, job.sdist_sha256, job.target.id
        )
        order = WorkerOrder(
            project=job.project,
            version=job.version,
            sdist_filename=job.sdist_filename,
            sdist_sha256=job.sdist_sha256,
            sdist_url=public_url(job.sdist_url),
            sdist_path=str(sdist_path),
            target=job.target.id,
            interpreter=str(interpreter),
            index_url=settings.index_url,
            work_dir=str(folder.path),
            limits=settings.limits,
            build_user=build_user(settings.build_uid, slot),
            bwrap=settings.bwrap,
        )
        log.info("build_started", project=job.project, version=job.version, target=job.target.id, slot=slot)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "builder.worker", str(os.getpid()),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env=_worker_environment(),
            cwd=str(folder.path),
            start_new_session=True,
        )  # fmt: skip
        # Each sandboxed step has its own time limit inside the worker; this bounds the worker as a whole.
        deadline = settings.limits.timeout_seconds * 10 + 120
        try:
            stdout, stderr = await asyncio.wait_for(process.communicate(order.to_json()), deadline)
        except TimeoutError:
            _kill_worker(process)
            await process.wait()
            return WorkerReport.failure(
                Phase.INTERNAL, f"the build worker did not finish in {deadline:.0f} s"
            ), folder
        except BaseException:
            _kill_worker(process)  # shutting down: the sandbox dies with the worker (PR_SET_PDEATHSIG)
            await process.wait()
            await self._remove(folder)
            raise
        try:
            return WorkerReport.from_json(stdout[: 4 << 20]), folder
        except (ValueError, TypeError):
            detail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            crash = f"the build worker crashed ({process.returncode}): {detail[0][:300]}"
            return WorkerReport.failure(Phase.INTERNAL, crash), folder


def _kill_worker(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)  # the worker leads its own session (launchers have theirs)


def _worker_environment() -> dict[str, str]:
    """Nothing of the proxy's environment (admin token, credentials) but what Python needs to find us."""
    environment = {"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8", "PYTHONDONTWRITEBYTECODE": "1"}
    if os.environ.get("PYTHONPATH"):
        environment["PYTHONPATH"] = os.environ["PYTHONPATH"]
    return environment


def _glibc_version() -> tuple[int, int]:
    _, version = platform.libc_ver()
    parts = [int(part) for part in version.split(".")[:2] if part.isdigit()]
    return (parts[0], parts[1]) if len(parts) == 2 else (0, 0)


def _log_tail(path: Path, lines: int = 3) -> str:
    """What a failed self-check's log says: bubblewrap's and the launcher's own complaints first."""
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    kept = [line.strip() for line in text.splitlines() if line.strip()]
    own = [line for line in kept if line.startswith(("bwrap:", "wheelfarm launch:"))]
    return " | ".join((own or kept)[-lines:])[-600:]
