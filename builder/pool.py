"""The local builder pool: bounded concurrency, one build per key, a worker process per build.

It implements the Builder protocol that a queue-based remote pool can implement too. Builds run as tasks
of their own, so a client that hangs up does not cancel a build that others (or later clients) will use.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import fnmatch
import hashlib
import os
import platform
import pwd
import re
import shutil
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import structlog

from builder import confinement, selfcheck
from builder.artifacts import Artifacts
from builder.interpreters import available_versions, find_interpreter
from builder.jobs import MIN_PYTHON, BuildJob, BuildKey, BuildRecord, BuildState, Limits, Phase, public_url
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
_OLD_LAYOUT = re.compile(r"^([0-9a-f]{16}-[a-z0-9_]+-\d+|jobs|\.frontend(-\d+)?)$")  # wheelfarm-builder/1


class PoolState(enum.Enum):
    CHECKING = "checking"  # the start-up self-check runs: no build links yet
    READY = "ready"
    UNAVAILABLE = "unavailable"  # builds are off here; ``reason`` says why


@dataclass(frozen=True, slots=True)
class PoolStatus:
    state: PoolState
    reason: str = ""


@dataclass(eq=False)
class RunningBuild:
    job: BuildJob
    task: asyncio.Task[BuildRecord]
    queued_at: float
    started_at: float | None = None


class Builder(Protocol):
    def status(self) -> PoolStatus: ...

    async def wait_ready(self) -> PoolStatus:
        """The status once the start-up check is over."""
        ...

    def serves(self, target: Target) -> bool: ...

    def targets_like(self, target: Target) -> Sequence[Target]:
        """The targets this builder serves on ``target``'s platform, one per Python version it has."""
        ...

    def allows(self, project: str) -> bool: ...

    def record(self, key: BuildKey) -> BuildRecord | None:
        """The finished build for ``key`` (a failure made by an older builder does not count)."""
        ...

    def running(self) -> Sequence[RunningBuild]: ...

    def records(self) -> Sequence[BuildRecord]:
        """Every finished build, done or failed."""
        ...

    def start(self, job: BuildJob) -> asyncio.Task[BuildRecord]:
        """Start the build, or join the one already running for the same key."""
        ...

    def forget(self, key: BuildKey) -> bool: ...

    async def upstream_changed(self, project: str, sdists: frozenset[str], now: float) -> None:
        """Upstream now lists these sdist sha256s for ``project``: builds of others become orphans
        (kept for the retention time, then deleted); builds of listed ones stop being orphans."""
        ...

    async def sweep(self, now: float) -> None:
        """Delete orphaned builds older than the retention time."""
        ...

    def artifact(self, key: BuildKey, filename: str) -> Path | None:
        """A file the build of ``key`` left (wheel, .metadata, build.log, provenance.json), if present."""
        ...

    @property
    def generation(self) -> Mapping[str, int]:
        """Per project, a number that changes whenever a build of it finishes or is forgotten."""
        ...


SdistFetcher = Callable[[BuildJob], Awaitable[Path]]


@dataclass(frozen=True, slots=True)
class PoolSettings:
    work_root: Path
    index_url: str
    workers: int = 2
    limits: Limits = field(default_factory=Limits)
    build_uid: int = 1_900_000_000  # as root, slot N builds as uid and gid build_uid + N
    bwrap: str = ""  # the bubblewrap binary ("": found on the usual paths)
    interpreters: Mapping[str, str] = field(default_factory=dict)
    targets: tuple[str, ...] = ("*",)
    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = ()
    orphan_retention: float = 7 * 24 * 3600.0
    max_builds: int = 10_000


class LocalPool:
    def __init__(self, settings: PoolSettings, artifacts: Artifacts, fetch_sdist: SdistFetcher) -> None:
        self._settings = settings
        self._artifacts = artifacts
        # Projects a build found to need a toolchain this builder lacks (Phase.TOOLCHAIN): none of their
        # releases is offered for builds here, so no other client meets a build that cannot work.
        self._lacking: dict[str, str] = {}
        for record in artifacts.all():
            self._note_lacking(record)
        self._fetch_sdist = fetch_sdist
        self._semaphore = asyncio.Semaphore(settings.workers)
        self._free_slots = list(range(settings.workers))
        self._running: dict[BuildKey, RunningBuild] = {}
        self._generation: dict[str, int] = {}
        self._interpreters: dict[str, Path | None] = {}
        # Read once: platform.libc_ver() reads the interpreter binary, too slow for every page render.
        self._host_arch = platform.machine().lower()
        self._host_family = "manylinux" if platform.libc_ver()[0] == "glibc" else "musllinux"
        self._status = PoolStatus(PoolState.CHECKING)
        self._versions: tuple[int, ...] = ()  # Python 3 minor versions with an interpreter here
        self._check: asyncio.Task[None] | None = None
        self.on_finished: Callable[[BuildRecord], None] | None = None
        settings.work_root.mkdir(parents=True, exist_ok=True)
        os.chmod(settings.work_root, 0o711)  # build users pass through to nothing: their folders are 0700

    def status(self) -> PoolStatus:
        return self._status

    async def wait_ready(self) -> PoolStatus:
        if self._status.state is PoolState.CHECKING and self._check is not None:
            await asyncio.shield(self._check)
        return self._status

    @property
    def disabled_reason(self) -> str | None:
        return self._status.reason if self._status.state is PoolState.UNAVAILABLE else None

    def begin(self) -> asyncio.Task[None]:
        """Clean up what earlier runs left, then run the self-check; builds are offered once it passes."""
        self._check = asyncio.create_task(self._start_up(), name="builder self-check")
        return self._check

    async def _start_up(self) -> None:
        reason = self._why_disabled()
        found = await asyncio.to_thread(available_versions, self._settings.interpreters)
        self._versions = tuple(int(version.split(".")[1]) for version in found)
        if reason is None:
            try:
                await asyncio.to_thread(self._remove_leftovers)
            except OSError as exc:
                log.warning("leftovers_not_removed", error=str(exc))
            try:
                reason = await self._self_check()
            except Exception as exc:  # the check's own trouble: builds stay off, saying why
                reason = f"the sandbox self-check could not run: {exc!r}"
        self._status = (
            PoolStatus(PoolState.READY) if reason is None else PoolStatus(PoolState.UNAVAILABLE, reason)
        )
        if reason is None:
            log.info("builder_ready", workers=self._settings.workers, index=self._settings.index_url)
        else:
            log.warning("builds_disabled", reason=reason)

    def _why_disabled(self) -> str | None:
        if platform.system() != "Linux":
            return "builders run on Linux only"
        if bwrap_path(self._settings.bwrap) is None:
            return "bubblewrap (bwrap) is not installed: install it (Debian: apt-get install bubblewrap)"
        if host_root():
            for slot in range(self._settings.workers):
                uid = self._settings.build_uid + slot
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
        root = self._settings.work_root
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
        version = f"{sys.version_info[0]}.{sys.version_info[1]}"
        versions = [version, *available_versions(self._settings.interpreters)]
        interpreter = next((v for v in versions if self.interpreter_for(v) is not None), None)
        if interpreter is None:
            return "no CPython interpreter for any target was found (see [builder] interpreters)"
        sdist = await asyncio.to_thread(selfcheck.write_sdist, self._settings.work_root / ".selfcheck")
        digest = hashlib.sha256(sdist.read_bytes()).hexdigest()
        target = self.host_target(interpreter)
        job = BuildJob(selfcheck.NAME, selfcheck.VERSION, sdist.name, digest, sdist.as_uri(), target)
        started = time.monotonic()
        result, folder = await self._run_worker(job, 0, sdist_path=sdist)
        log_tail = _log_tail(folder.log) if folder is not None else ""
        if folder is not None:
            await self._remove(folder)
        if not result.ok:
            detail = f" ({log_tail})" if log_tail and log_tail not in result.error else ""
            reason = f"the sandbox self-check failed in {result.phase}: {result.error}{detail}"
            hints = await asyncio.to_thread(confinement.explain) if "bwrap:" in reason else ""
            return f"{reason}; {hints}" if hints else reason
        log.info("builder_self_check_passed", seconds=round(time.monotonic() - started, 2), target=target.id)
        return None

    def host_target(self, version: str) -> Target:
        libc_major, libc_minor = _glibc_version()
        major, minor = (int(part) for part in version.split("."))
        return Target((major, minor), f"{self._host_family}_{libc_major}_{libc_minor}_{self._host_arch}")

    @property
    def generation(self) -> Mapping[str, int]:
        return self._generation

    def interpreter(self, target: Target) -> Path | None:
        return self.interpreter_for(target.python_version)

    def interpreter_for(self, version: str) -> Path | None:
        if version not in self._interpreters:
            self._interpreters[version] = find_interpreter(version, self._settings.interpreters)
        return self._interpreters[version]

    def serves(self, target: Target) -> bool:
        if self._status.state is not PoolState.READY or target.python < MIN_PYTHON:
            return False
        if not any(fnmatch.fnmatchcase(target.id, pattern) for pattern in self._settings.targets):
            return False
        family, arch = self._host_family, self._host_arch
        if not target.platform.startswith(family + "_") or not target.platform.endswith("_" + arch):
            return False  # another architecture or libc: we could not build a wheel that runs there
        return self.interpreter(target) is not None

    def targets_like(self, target: Target) -> Sequence[Target]:
        versions = self._versions
        return [t for t in (Target((3, minor), target.platform) for minor in versions) if self.serves(t)]

    def allows(self, project: str) -> bool:
        if project in self._lacking:
            return False
        if any(fnmatch.fnmatchcase(project, pattern) for pattern in self._settings.deny):
            return False
        return any(fnmatch.fnmatchcase(project, pattern) for pattern in self._settings.allow)

    def record(self, key: BuildKey) -> BuildRecord | None:
        """The finished build of ``key``. A failure is final only when the package caused it with this
        builder: one an older builder made, or the host's own (phase internal), may be tried again."""
        record = self._artifacts.get(key)
        if record is None or record.state is not BuildState.FAILED:
            return record
        final = record.builder == BUILDER_VERSION and record.phase is not Phase.INTERNAL
        return record if final else None

    def running(self) -> Sequence[RunningBuild]:
        return list(self._running.values())

    def records(self) -> Sequence[BuildRecord]:
        return self._artifacts.all()

    def queued_count(self) -> int:
        return sum(1 for running in self._running.values() if running.started_at is None)

    def running_count(self) -> int:
        return sum(1 for running in self._running.values() if running.started_at is not None)

    def start(self, job: BuildJob) -> asyncio.Task[BuildRecord]:
        running = self._running.get(job.key)
        if running is not None:
            return running.task
        task = asyncio.create_task(self._build(job), name=f"build {job.key}")
        self._running[job.key] = RunningBuild(job, task, time.time())
        task.add_done_callback(lambda _: self._running.pop(job.key, None))
        return task

    async def upstream_changed(self, project: str, sdists: frozenset[str], now: float) -> None:
        changed = False
        for record in self._artifacts.all():
            if record.project != project:
                continue
            listed = record.key.sdist_sha256 in sdists
            if listed and record.orphaned_since is not None:
                await asyncio.to_thread(self._artifacts.set_orphaned, record.key, None)
                changed = True
            elif not listed and record.orphaned_since is None:
                await asyncio.to_thread(self._artifacts.set_orphaned, record.key, now)
                log.info(
                    "build_orphaned", project=project, sdist=record.sdist_filename, target=record.key.target
                )
                changed = True
        await self.sweep(now)
        if changed:
            self._bump(project)

    async def sweep(self, now: float) -> None:
        """Delete orphaned builds older than the retention time."""
        for record in self._artifacts.all():
            since = record.orphaned_since
            if since is not None and now - since >= self._settings.orphan_retention:
                await asyncio.to_thread(self._artifacts.forget, record.key)
                log.info("orphan_deleted", project=record.project, sdist=record.sdist_filename)
                self._bump(record.project)

    def forget(self, key: BuildKey) -> bool:
        record = self._artifacts.get(key)
        removed = self._artifacts.forget(key)
        if record is not None:
            if record.phase is Phase.TOOLCHAIN:
                self._lacking.pop(record.project, None)  # a retry asks again
            self._bump(record.project)
        return removed

    def _note_lacking(self, record: BuildRecord) -> None:
        if record.phase is Phase.TOOLCHAIN and record.builder == BUILDER_VERSION:
            self._lacking[record.project] = record.error

    async def close(self) -> None:
        tasks: list[asyncio.Task[Any]] = [running.task for running in self._running.values()]
        if self._check is not None:
            tasks.append(self._check)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def artifact(self, key: BuildKey, filename: str) -> Path | None:
        path = self._artifacts.folder(key) / filename
        return path if "/" not in filename and path.is_file() else None

    async def _remove(self, folder: BuildFolder) -> None:
        """Remove a build's folder; a failure is logged (start-up tries again), never a client's 500."""
        try:
            removed = await asyncio.to_thread(remove_build_folder, self._settings.work_root, folder.path)
        except OSError as exc:
            removed = False
            log.warning("build_folder_not_removed", folder=folder.path.name, error=str(exc))
        if not removed:
            log.warning("build_folder_left", folder=folder.path.name)

    def _bump(self, project: str) -> None:
        self._generation[project] = self._generation.get(project, 0) + 1

    async def _build(self, job: BuildJob) -> BuildRecord:
        queued = time.time()
        # The sdist first, outside the slots: a slow upstream must not hold a slot other builds wait for.
        sdist, failure = await self._fetch(job)
        folder: BuildFolder | None = None
        if sdist is None:
            result = failure or WorkerReport.failure(Phase.FETCH, "no sdist")
        else:
            async with self._semaphore:
                slot = self._free_slots.pop()
                running = self._running.get(job.key)
                if running is not None:
                    running.started_at = time.time()
                try:
                    result, folder = await self._run_worker(job, slot, sdist_path=sdist)
                finally:
                    self._free_slots.append(slot)
        try:
            record = await asyncio.to_thread(
                self._artifacts.keep,
                job.key,
                result,
                folder,
                project=job.project,
                version=job.version,
                sdist=job.sdist_filename,
                queued=queued,
                builder=BUILDER_VERSION,
            )
        finally:
            if folder is not None:
                await self._remove(folder)
        for dropped in await asyncio.to_thread(self._artifacts.prune, self._settings.max_builds):
            self._bump(dropped.project)
        self._note_lacking(record)
        self._bump(job.project)
        if self.on_finished is not None:
            self.on_finished(record)
        log.info(
            "build_finished",
            project=job.project,
            version=job.version,
            target=job.target.id,
            state=record.state.value,
            seconds=round(record.duration, 2),
            queued_seconds=round(record.queued_seconds, 2),
            phase=record.phase.value if record.phase else None,
            error=record.error or None,
        )
        return record

    async def _fetch(self, job: BuildJob) -> tuple[Path | None, WorkerReport | None]:
        """The verified sdist, or the failure to get it (within the build's time limit)."""
        deadline = self._settings.limits.timeout_seconds
        try:
            return await asyncio.wait_for(self._fetch_sdist(job), deadline), None
        except TimeoutError:
            return None, WorkerReport.failure(
                Phase.FETCH, f"the sdist did not arrive within {deadline:.0f} s"
            )
        except Exception as exc:  # any fetch failure is this build's failure, named
            return None, WorkerReport.failure(Phase.FETCH, f"cannot fetch the sdist: {exc}")

    async def _run_worker(
        self, job: BuildJob, slot: int, sdist_path: Path
    ) -> tuple[WorkerReport, BuildFolder | None]:
        """Run one build in a worker process; the folder is this build's own (removed by the caller)."""
        settings = self._settings
        interpreter = self.interpreter(job.target)
        if interpreter is None:
            return WorkerReport.failure(
                Phase.ENVIRONMENT, f"no Python {job.target.python_version} on this builder"
            ), None
        folder = await asyncio.to_thread(
            new_build_folder, settings.work_root, job.sdist_sha256, job.target.id
        )
        request = WorkerOrder(
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
            stdout, stderr = await asyncio.wait_for(process.communicate(request.to_json()), deadline)
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
        os.killpg(process.pid, signal.SIGKILL)  # the worker leads its own session (and its launchers')


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
