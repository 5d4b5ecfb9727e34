"""The embedded build service: builds run on this host, records and artifacts are kept in the cache folder
(proxy/builds/records.py). One process; the default deployment.

Jobs go through the same path as a cluster's: a queue (here in memory, proxy/builds/localqueue.py) that this
host's builder loop (builder/loop.py) claims them from, and this service is that loop's job source. A build
runs apart from the clients that asked for it, so one that hangs up does not end a build that others (or
later clients) will use; one build per key at a time. The loop claims more jobs than there are worker slots,
so sdists still downloading from a slow upstream do not keep a slot from the builds that are ready.
"""

from __future__ import annotations

import asyncio
import dataclasses
import fnmatch
import functools
import re
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import structlog

from builder.host import BuildHost
from builder.jobs import (
    Artifact,
    BuildJob,
    BuildKey,
    BuildProgress,
    BuildRecord,
    BuildState,
    Phase,
    TargetOffer,
    artifact_sha256,
)
from builder.loop import BuilderLoop
from builder.protocol import WorkerReport
from builder.workdir import BuildFolder
from proxy.builds.finished import announce, fetch_within, finished_record, is_final, lacking_toolchain
from proxy.builds.judge import awaits_verdict, facts_of, job_of, judged, judges, verdict_on, with_verdict
from proxy.builds.localqueue import LocalQueue
from proxy.builds.records import BuildRecords
from proxy.builds.service import (
    BuildCounts,
    BuilderView,
    Capabilities,
    FinishedListener,
    NotOffered,
    ProjectBuilds,
    ServiceState,
    ServiceStatus,
)
from proxy.builds.snapshots import Snapshots
from proxy.clock import Clock
from proxy.storage.blobs import Blob

log = structlog.get_logger(__name__)

SdistFetcher = Callable[[BuildJob], Awaitable[Path]]
SWEEP_INTERVAL_SECONDS = 600.0


@dataclass(frozen=True, slots=True)
class BuildPolicy:
    """Which projects may be built (fnmatch patterns of normalized names), what is kept, and how long."""

    allow: tuple[str, ...] = ("*",)
    deny: tuple[str, ...] = ()
    orphan_retention: float = 7 * 24 * 3600.0  # seconds a build outlives its sdist upstream
    max_builds: int = 10_000  # records kept; past it orphans go first, then the oldest
    reproduce: bool = True  # build each wheel a second time, at a quiet moment, and record the verdict

    def why_not(self, project: str) -> str | None:
        if _matches_any(self.deny).match(project):
            return f"the builder's policy does not allow building {project} ([builder] deny)"
        if not _matches_any(self.allow).match(project):
            return f"the builder's policy does not allow building {project} ([builder] allow)"
        return None


@functools.lru_cache(maxsize=8)
def _matches_any(patterns: tuple[str, ...]) -> re.Pattern[str]:
    """One regex for a list of fnmatch patterns (case-sensitive, as fnmatchcase): asked on every page."""
    if not patterns:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(f"(?:{fnmatch.translate(pattern)})" for pattern in patterns))


class EmbeddedBuildService:
    def __init__(
        self,
        host: BuildHost,
        records: BuildRecords,
        fetch_sdist: SdistFetcher,
        policy: BuildPolicy,
        clock: Clock,
        fetch_timeout: float,
    ) -> None:
        self._host = host
        self._records = records
        self._fetch_sdist = fetch_sdist
        self._policy = policy
        self._clock = clock
        self._fetch_timeout = fetch_timeout
        self._status = ServiceStatus(ServiceState.CHECKING)
        self._queue = LocalQueue()
        self._kept: dict[BuildKey, BuildRecord] = {}  # records of builds whose work folder is not gone yet
        # Built wheels waiting for their second build (a reproducibility verdict), and the one running now.
        self._seconds: OrderedDict[BuildKey, BuildJob] = OrderedDict()
        self._second: BuildJob | None = None
        self._snapshots = Snapshots()
        self._capabilities = Capabilities(self._status)  # made again whenever the status changes
        # Projects a build found to need a toolchain this builder lacks (Phase.TOOLCHAIN): none of their
        # releases is offered for builds here, so no other client meets a build that cannot work.
        self._lacking: dict[str, str] = {}
        self._listeners: list[FinishedListener] = []
        self._background: list[asyncio.Task[None]] = []
        self._check: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Load the records, then check the host in the background; builds are offered once it passes."""
        await asyncio.to_thread(self._records.load)
        for record in self._records:
            self._note_lacking(record)
        self._check = asyncio.create_task(self._start_up(), name="builder self-check")
        self._background.append(asyncio.create_task(self._sweep_now_and_then(), name="orphan sweep"))

    async def _start_up(self) -> None:
        reason = await self._host.start()
        if reason is None:
            self._status = ServiceStatus(ServiceState.READY)
            self._capabilities = Capabilities(self._status, (self._host.offer,))
            settings = self._host.settings
            loop = BuilderLoop(self._host, self, claims=max(4, 2 * settings.workers))
            if self._policy.reproduce:
                await self._unjudged()
            self._background.append(asyncio.create_task(loop.run(), name="builder"))
            log.info("builder_ready", workers=settings.workers, index=settings.index_url)
        else:
            self._status = ServiceStatus(ServiceState.UNAVAILABLE, reason)
            self._capabilities = Capabilities(self._status)
            log.warning("builds_disabled", reason=reason)

    async def capabilities(self) -> Capabilities:
        return self._capabilities

    async def wait_ready(self) -> ServiceStatus:
        if self._status.state is ServiceState.CHECKING and self._check is not None:
            await asyncio.shield(self._check)
        return self._status

    async def project(self, project: str) -> ProjectBuilds:
        snapshot = self._snapshots.current(project)
        if snapshot is not None:
            return snapshot
        final = {key: r for key, r in self._records.of_project(project).items() if is_final(r)}
        reason = self._why_not(project)
        version = self._snapshots.version(project)
        return self._snapshots.keep(ProjectBuilds(project, version, reason is None, final, reason or ""))

    async def submit(self, job: BuildJob) -> BuildProgress | BuildRecord:
        record = await self.record(job.key)
        if record is not None:
            return record
        progress = self._queue.progress(job.key)
        if progress is not None:
            return progress
        if not (await self.capabilities()).serves(job.target):
            raise NotOffered(f"no builder here builds for {job.target}")
        reason = self._why_not(job.project)
        if reason is not None:
            raise NotOffered(reason)
        return self._queue.enqueue(job, time.time())

    async def wait(self, key: BuildKey) -> BuildRecord | None:
        if not self._queue.holds(key):
            return self._records.get(key)
        return await self._queue.wait(key)

    async def record(self, key: BuildKey, *, final: bool = True) -> BuildRecord | None:
        record = self._records.get(key)
        if record is None or not final or is_final(record):
            return record
        return None

    async def records(self, project: str | None = None) -> Sequence[BuildRecord]:
        chosen = self._records if project is None else self._records.of_project(project).values()
        return sorted(chosen, key=lambda r: (r.project, r.version, r.key.target))

    async def by_wheel(self, sha256: str, *, metadata: bool = False) -> BuildRecord | None:
        return self._records.by_wheel(sha256, metadata=metadata)

    async def active(self) -> Sequence[BuildProgress]:
        return sorted(self._queue.active(), key=lambda p: p.queued_at)

    async def counts(self) -> BuildCounts:
        records = list(self._records)
        active = self._queue.active()
        return BuildCounts(
            queued=sum(1 for p in active if p.started_at is None),
            running=sum(1 for p in active if p.started_at is not None),
            done=sum(1 for r in records if r.state is BuildState.DONE),
            failed=sum(1 for r in records if r.state is BuildState.FAILED),
            orphaned=sum(1 for r in records if r.orphaned_since is not None),
            built_bytes=sum(r.wheel_size for r in records if r.state is BuildState.DONE),
            reproduced=sum(1 for r in records if r.reproduced is True),
            not_reproduced=sum(1 for r in records if r.reproduced is False),
        )

    async def builders(self) -> Sequence[BuilderView]:
        ready = self._status.state is ServiceState.READY
        jobs = tuple(f"{p.job.project} for {p.job.target.id}" for p in self._queue.active() if p.started_at)
        return (BuilderView("this host", self._host.offer if ready else None, ready, jobs=jobs),)

    async def artifact(self, record: BuildRecord, artifact: Artifact) -> Blob | None:
        sha = artifact_sha256(record, artifact)
        return await self._records.blobs.get(sha) if sha else None

    async def chunks(self, blob: Blob, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        async for chunk in self._records.blobs.chunks(blob.key, start, end):
            yield chunk

    async def forget(self, key: BuildKey) -> BuildRecord | None:
        record = await self._records.forget(key)
        if record is not None:
            if record.phase is Phase.TOOLCHAIN:
                self._lacking.pop(record.project, None)  # a retry asks again
            self._bump(record.project)
        return record

    async def upstream_changed(self, project: str, sdists: frozenset[str]) -> None:
        now = self._clock.now()
        changed = False
        for record in list(self._records.of_project(project).values()):
            listed = record.key.sdist_sha256 in sdists
            if listed and record.orphaned_since is not None:
                await self._records.save(_orphaned(record, None))
                changed = True
            elif not listed and record.orphaned_since is None:
                await self._records.save(_orphaned(record, now))
                log.info(
                    "build_orphaned", project=project, sdist=record.sdist_filename, target=record.key.target
                )
                changed = True
        await self._sweep(self._records.of_project(project).values(), now)
        if changed:
            self._bump(project)

    def on_finished(self, listener: FinishedListener) -> None:
        self._listeners.append(listener)

    async def close(self) -> None:
        tasks: list[asyncio.Task[None]] = list(self._background)
        if self._check is not None:
            tasks.append(self._check)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._queue.close()

    def _why_not(self, project: str) -> str | None:
        return self._lacking.get(project) or self._policy.why_not(project)

    def _note_lacking(self, record: BuildRecord) -> None:
        why = lacking_toolchain(record)
        if why is not None:
            self._lacking[record.project] = why

    def _bump(self, project: str) -> None:
        self._snapshots.changed(project)

    async def _sweep_now_and_then(self) -> None:
        """Orphans also expire for projects nobody asks about any more."""
        while True:
            await asyncio.sleep(SWEEP_INTERVAL_SECONDS)
            try:
                await self._sweep(list(self._records), self._clock.now())
            except OSError as exc:
                log.warning("orphan_sweep_failed", error=str(exc))

    async def _sweep(self, records: Iterable[BuildRecord], now: float) -> None:
        """Delete orphaned builds older than the retention time."""
        for record in list(records):
            since = record.orphaned_since
            if since is not None and now - since >= self._policy.orphan_retention:
                await self.forget(record.key)
                log.info("orphan_deleted", project=record.project, sdist=record.sdist_filename)

    # -- the job source of this host's builder loop (builder/loop.py) ------------------------------------

    renew_seconds: float | None = None  # the builder runs in this process: its jobs cannot be lost to another

    async def claim(self, offer: TargetOffer) -> BuildJob | None:
        return await self._queue.claim(offer, otherwise=lambda: self._second_build(offer))

    def _second_build(self, offer: TargetOffer) -> BuildJob | None:
        """At a quiet moment (nothing queued or building, no other second build), a built wheel's second
        build, for its reproducibility verdict."""
        if self._second is not None or self._queue.active():
            return None
        for key, again in self._seconds.items():
            if offer.serves(again.target):
                del self._seconds[key]
                self._second = again
                return again
        return None

    async def sdist(self, job: BuildJob) -> Path | WorkerReport:
        return await fetch_within(self._fetch_sdist, job, self._fetch_timeout)

    def started(self, job: BuildJob) -> None:
        if job is not self._second:
            self._queue.started(job.key, time.time())

    async def renew(self, job: BuildJob) -> bool:
        return True

    async def keep(self, job: BuildJob, report: WorkerReport, folder: BuildFolder | None) -> None:
        if job is self._second:
            await self._judge(job, report, folder)
            return
        record = finished_record(job, report, queued_at=self._queue.queued_at(job.key))
        self._kept[job.key] = await self._records.keep(record, report, folder)

    async def abandon(self, job: BuildJob, error: str) -> None:
        if job is self._second:
            log.warning("second_build_abandoned", key=str(job.key), error=error)  # unjudged: the host's fault
            return
        await self.keep(job, WorkerReport.failure(Phase.INTERNAL, error), None)

    async def finished(self, job: BuildJob) -> None:
        """The build's folder is gone: its waiting clients wake, and it counts from now on."""
        if job is self._second:
            self._second = None
            self._queue.wake()
            return
        record = self._kept.pop(job.key, None)
        if record is None:  # cancelled: the server is stopping
            self._queue.end(job.key, None)
            return
        try:
            await self._prune()
        finally:
            self._note_lacking(record)
            self._bump(job.project)
            if self._policy.reproduce and record.state is BuildState.DONE:
                self._seconds[job.key] = job  # before end(): that wakes the claims
            self._queue.end(job.key, record)
        announce(record, self._listeners)

    async def _judge(self, job: BuildJob, report: WorkerReport, folder: BuildFolder | None) -> None:
        """Compare a second build's wheel with the one served; record the verdict, and sign it."""
        record = self._records.get(job.key)
        if record is None or not awaits_verdict(record):
            return  # forgotten or rebuilt meanwhile
        if not judges(report, remote=False):
            log.warning(
                "second_build_unjudged", key=str(job.key), phase=report.phase, error=report.error[:300]
            )
            return  # the host's trouble: the next start queues it again
        second = folder.result / report.wheel_filename if report.ok and folder is not None else None
        blobs = self._records.blobs
        verdict = await verdict_on(blobs, record, report, second)
        if verdict is None:
            return
        result = await judged(blobs, record, verdict, "farm", self._records.attestor)
        current = self._records.get(job.key)  # as it is now: it may have changed while we compared
        if current is not None and current.wheel_sha256 == record.wheel_sha256 and awaits_verdict(current):
            await self._records.save(with_verdict(current, result))
            self._bump(job.project)

    async def _unjudged(self) -> None:
        """Queue the second builds a restart interrupted (and those of wheels built before there were any):
        each served wheel gets its verdict once."""
        for record in list(self._records):
            if not awaits_verdict(record) or record.key in self._seconds:
                continue
            facts = await facts_of(self._records.blobs, record)
            job = job_of(record, facts) if facts is not None else None
            if job is not None:
                self._seconds[record.key] = job
        self._queue.wake()

    async def _prune(self) -> None:
        """Past ``max_builds`` records: orphans go first, then the oldest finished."""
        excess = len(self._records) - self._policy.max_builds
        if self._policy.max_builds <= 0 or excess <= 0:
            return
        order = sorted(self._records, key=lambda r: (r.orphaned_since is None, r.finished_at))
        for record in order[:excess]:
            await self.forget(record.key)


def _orphaned(record: BuildRecord, since: float | None) -> BuildRecord:
    return dataclasses.replace(record, orphaned_since=since)
