"""The local builder pool: bounded concurrency, one build per key, a worker process per build.

It implements the Builder protocol that a queue-based remote pool can implement too. Builds run as tasks
of their own, so a client that hangs up does not cancel a build that others (or later clients) will use.
"""

from __future__ import annotations

import asyncio
import fnmatch
import platform
import shutil
import sys
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import structlog

from builder.artifacts import Artifacts, BuildRecord
from builder.interpreters import find_interpreter
from builder.jobs import BuildKey, BuildRequest, BuildResult, BuildState, Limits
from builder.sandbox import bwrap_path
from builder.tags import Target

log = structlog.get_logger(__name__)

BUILDER_VERSION = "wheelfarm-builder/1"


@dataclass(frozen=True, slots=True)
class BuildJob:
    """What the proxy asks for: build this sdist for this target."""

    project: str
    version: str
    sdist_filename: str
    sdist_sha256: str
    sdist_url: str
    target: Target

    @property
    def key(self) -> BuildKey:
        return BuildKey(self.sdist_sha256, self.target.id)


@dataclass(eq=False)
class RunningBuild:
    job: BuildJob
    task: asyncio.Task[BuildRecord]
    queued_at: float
    started_at: float | None = None


class Builder(Protocol):
    def serves(self, target: Target) -> bool: ...

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
    sandbox: bool = True
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
        self._fetch_sdist = fetch_sdist
        self._semaphore = asyncio.Semaphore(settings.workers)
        self._free_slots = list(range(settings.workers))
        self._running: dict[BuildKey, RunningBuild] = {}
        self._generation: dict[str, int] = {}
        self._interpreters: dict[str, Path | None] = {}
        self.disabled_reason = self._why_disabled()
        # Read once: platform.libc_ver() reads the interpreter binary, too slow for every page render.
        self._host_arch = platform.machine().lower()
        self._host_family = "manylinux" if platform.libc_ver()[0] == "glibc" else "musllinux"
        self.on_finished: Callable[[BuildRecord], None] | None = None
        settings.work_root.mkdir(parents=True, exist_ok=True)

    def _why_disabled(self) -> str | None:
        if self._settings.sandbox and bwrap_path() is None:
            return "bubblewrap (bwrap) is not installed and [builder] sandbox = 'required'"
        if platform.system() != "Linux":
            return "builders run on Linux only"
        return None

    @property
    def generation(self) -> Mapping[str, int]:
        return self._generation

    def interpreter(self, target: Target) -> Path | None:
        version = target.python_version
        if version not in self._interpreters:
            self._interpreters[version] = find_interpreter(version, self._settings.interpreters)
        return self._interpreters[version]

    def serves(self, target: Target) -> bool:
        if self.disabled_reason is not None:
            return False
        if not any(fnmatch.fnmatchcase(target.id, pattern) for pattern in self._settings.targets):
            return False
        family, arch = self._host_family, self._host_arch
        if not target.platform.startswith(family + "_") or not target.platform.endswith("_" + arch):
            return False  # another architecture or libc: we could not build a wheel that runs there
        return self.interpreter(target) is not None

    def allows(self, project: str) -> bool:
        if any(fnmatch.fnmatchcase(project, pattern) for pattern in self._settings.deny):
            return False
        return any(fnmatch.fnmatchcase(project, pattern) for pattern in self._settings.allow)

    def record(self, key: BuildKey) -> BuildRecord | None:
        record = self._artifacts.get(key)
        if record is not None and record.state is BuildState.FAILED and record.builder != BUILDER_VERSION:
            return None
        return record

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
            self._bump(record.project)
        return removed

    async def close(self) -> None:
        tasks = [running.task for running in self._running.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    def artifact(self, key: BuildKey, filename: str) -> Path | None:
        path = self._artifacts.folder(key) / filename
        return path if "/" not in filename and path.is_file() else None

    def _bump(self, project: str) -> None:
        self._generation[project] = self._generation.get(project, 0) + 1

    async def _build(self, job: BuildJob) -> BuildRecord:
        queued = time.time()
        async with self._semaphore:
            slot = self._free_slots.pop()
            running = self._running.get(job.key)
            if running is not None:
                running.started_at = time.time()
            try:
                result = await self._run_worker(job, slot)
            finally:
                self._free_slots.append(slot)
        record = await asyncio.to_thread(
            self._artifacts.keep,
            job.key,
            result,
            project=job.project,
            version=job.version,
            sdist=job.sdist_filename,
            started=queued,
            builder=BUILDER_VERSION,
        )
        await asyncio.to_thread(_remove_work(result))
        for dropped in await asyncio.to_thread(self._artifacts.prune, self._settings.max_builds):
            self._bump(dropped.project)
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
            error=record.error or None,
        )
        return record

    async def _run_worker(self, job: BuildJob, slot: int) -> BuildResult:
        settings = self._settings
        jobs = settings.work_root / "jobs"
        jobs.mkdir(exist_ok=True)
        stem = f"{job.key.sdist_sha256[:16]}-{job.key.target}"
        log_stub = jobs / f"{stem}.log"
        interpreter = self.interpreter(job.target)
        if interpreter is None:
            return _failure(log_stub, "environment", f"no Python {job.target.python_version} on this builder")
        try:
            sdist_path = await self._fetch_sdist(job)
        except Exception as exc:  # any fetch failure is this build's failure, named
            return _failure(log_stub, "fetch", f"cannot fetch the sdist: {exc}")
        request = BuildRequest(
            project=job.project,
            version=job.version,
            sdist_filename=job.sdist_filename,
            sdist_sha256=job.sdist_sha256,
            sdist_url=job.sdist_url,
            sdist_path=str(sdist_path),
            target=job.target.id,
            interpreter=str(interpreter),
            index_url=settings.index_url,
            work_root=str(settings.work_root),
            limits=settings.limits,
            sandbox=settings.sandbox,
            slot=slot,
        )
        request_file = jobs / f"{stem}.request.json"
        result_file = jobs / f"{stem}.result.json"
        request_file.write_bytes(request.to_json())
        result_file.unlink(missing_ok=True)
        log.info("build_started", project=job.project, version=job.version, target=job.target.id, slot=slot)
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "builder.worker", str(request_file), str(result_file),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        # Each phase has its own time limit inside the worker; this bounds the worker as a whole.
        deadline = settings.limits.timeout_seconds * 6 + 120
        try:
            _, stderr = await asyncio.wait_for(process.communicate(), deadline)
        except TimeoutError:
            process.kill()
            await process.wait()
            return _failure(log_stub, "internal", f"the build worker did not finish in {deadline:.0f} s")
        except asyncio.CancelledError:
            process.kill()  # shutting down: the worker's sandbox dies with it (--die-with-parent)
            await process.wait()
            raise
        finally:
            request_file.unlink(missing_ok=True)
        try:
            return BuildResult.from_json(result_file.read_bytes())
        except (OSError, ValueError, TypeError):
            detail = stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
            return _failure(
                log_stub, "internal", f"the build worker crashed ({process.returncode}): {detail[0]}"
            )
        finally:
            result_file.unlink(missing_ok=True)


def _failure(log_path: Path, phase: str, error: str) -> BuildResult:
    log_path.write_text(f"build failed in {phase}: {error}\n")
    return BuildResult.failure(log_path, phase, error)


def _remove_work(result: BuildResult) -> Callable[[], None]:
    def remove() -> None:
        folder = Path(result.log_path).parent
        if folder.name != "jobs":
            shutil.rmtree(folder, ignore_errors=True)
        else:
            Path(result.log_path).unlink(missing_ok=True)

    return remove
