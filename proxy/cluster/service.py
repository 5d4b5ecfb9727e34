"""The build service of a cluster: the queue and records in PostgreSQL, the artifacts in a blob store every
process reaches, and this host's builder taking jobs from the queue like any other builder.

Every process of the cluster answers for all of it: a build submitted through one process is queued once
(the key is the row's primary key), built by whichever builder claims it, and the clients waiting in every
process wake when its ``NOTIFY`` arrives. Pages stay fast: each process keeps the build snapshot of the
projects it serves in memory and drops one only when a notification names its project (all of them when the
notification connection was lost, as notifications may have been missed meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import re
import socket
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import NoReturn, TypeVar

import orjson
import psycopg
import structlog

from builder.host import BUILDER_VERSION, BuildHost
from builder.jobs import (
    Artifact,
    BuildJob,
    BuildKey,
    BuildProgress,
    BuildRecord,
    Limits,
    Phase,
    TargetOffer,
    artifact_sha256,
)
from builder.protocol import WorkerReport
from builder.wheelcheck import BadWheel, inspect_wheel
from builder.workdir import BuildFolder
from proxy.builds.embedded import BuildPolicy, SdistFetcher
from proxy.builds.finished import fetch_within, finished_record, is_final, lacking_toolchain
from proxy.builds.records import artifact_shas, store_artifacts
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
from proxy.clock import Clock
from proxy.cluster.queue import BUILDS_CHANNEL, JOBS_CHANNEL, BuildQueue, Finished, Pool
from proxy.redact import redact
from proxy.storage.blobs import Blob, BlobStore

log = structlog.get_logger(__name__)
T = TypeVar("T")

SNAPSHOTS_KEPT = 4096
WAIT_POLL_SECONDS = 5.0  # a waiting client looks at its build this often even without a notification
IDLE_POLL_SECONDS = 5.0  # an idle builder slot looks for jobs this often even without a notification
RECONNECT_SECONDS = 1.0
OUTLAST_SECONDS = 120.0
TOKEN_CACHE_SECONDS = 10.0
TOKENS_REMEMBERED = 1024
TOKEN_FORMAT = re.compile(
    r"wfb_[A-Za-z0-9_-]{43}"
)  # what add_token makes: "wfb_" + 32 random bytes, base64url
MAX_HELD_BY_A_BUILDER = 16
REMOTE_FAILURE = "remote, unconfirmed"  # a failure's builder version that is never final (see _final)
BUILDERS_REFRESH_SECONDS = 2.0  # how often a process reads which builders are live


class ClusterBuildService:
    def __init__(
        self,
        pool: Pool,
        database_url: str,
        blobs: BlobStore,
        host: BuildHost | None,
        fetch_sdist: SdistFetcher,
        policy: BuildPolicy,
        clock: Clock,
        fetch_timeout: float,
        lease_seconds: float,
        limits: Limits | None = None,
    ) -> None:
        self._queue = BuildQueue(pool)
        self._pool = pool
        self._url = database_url
        self._blobs = blobs
        self._host = host
        self._fetch_sdist = fetch_sdist
        self._policy = policy
        self._clock = clock
        self._fetch_timeout = fetch_timeout
        self._lease = lease_seconds
        self.lease_seconds = lease_seconds
        self.limits = limits or Limits()  # what an uploaded wheel is inspected against
        self._job_signal = asyncio.Event()  # replaced at each new-job notice: remote builders long-poll on it
        self._stopping = asyncio.Event()  # the server shuts down: long polls end at once
        self._tokens: OrderedDict[str, tuple[str | None, float]] = OrderedDict()  # token -> (builder, when)
        self.builder_id = f"{socket.gethostname()}:{os.getpid()}"
        self._status = ServiceStatus(ServiceState.CHECKING)
        self._capabilities = Capabilities(self._status)
        self._checked = asyncio.Event()  # the builder's start-up check is over (passed or not)
        self._local = ServiceStatus(ServiceState.CHECKING)  # this host's builder
        # Per-project build versions from one counter: after a lost notification connection every project
        # starts past every version handed out before, so no render cached then is taken as current.
        self._counter = 0
        self._floor = 0
        self._versions: dict[str, int] = {}
        self._snapshots: OrderedDict[str, ProjectBuilds] = OrderedDict()
        self._changed: dict[BuildKey, asyncio.Event] = {}
        self._jobs = asyncio.Event()
        self._listeners: list[FinishedListener] = []
        self._tasks: list[asyncio.Task[None]] = []
        self._running: set[asyncio.Task[None]] = set()

    async def start(self) -> None:
        await self._pool.open(wait=True, timeout=30)
        self._tasks.append(asyncio.create_task(self._listen(), name="cluster notifications"))
        self._tasks.append(asyncio.create_task(self._requeue_expired(), name="cluster leases"))
        self._tasks.append(asyncio.create_task(self._start_builder(), name="cluster builder"))
        self._tasks.append(asyncio.create_task(self._follow_builders(), name="cluster builders"))

    async def _start_builder(self) -> None:
        if self._host is None:
            self._local = ServiceStatus(ServiceState.OFF, "no builder runs in this process")
            await self._refresh_builders()
            return
        reason = await self._host.start()
        if reason is not None:
            self._local = ServiceStatus(ServiceState.UNAVAILABLE, reason)
            log.warning("builds_disabled", reason=reason)
            await self._refresh_builders()
            return
        self._local = ServiceStatus(ServiceState.READY)
        log.info("builder_ready", workers=self._host.settings.workers, builder=self.builder_id)
        self._tasks.append(asyncio.create_task(self._heartbeat(self._host.offer), name="builder heartbeat"))
        for slot in range(self._host.settings.workers):
            self._tasks.append(asyncio.create_task(self._builder_slot(), name=f"builder slot {slot}"))

    async def _heartbeat(self, offer: TargetOffer) -> None:
        while True:
            try:
                await self._queue.announce(self.builder_id, offer)
                await self._refresh_builders()
            except psycopg.Error as exc:
                log.warning("builder_heartbeat_failed", error=redact(str(exc)).strip()[:300])
            await asyncio.sleep(self._lease / 3)

    async def _follow_builders(self) -> None:
        """Which targets the cluster serves: what the builders heard from within a lease announced."""
        while True:
            await asyncio.sleep(BUILDERS_REFRESH_SECONDS)
            try:
                await self._refresh_builders()
            except psycopg.Error as exc:
                log.warning("cluster_builders_unknown", error=redact(str(exc)).strip()[:300])

    async def _refresh_builders(self) -> None:
        offers = tuple(offer for _, offer in await self._queue.live_offers(self._lease))
        if offers:
            status = ServiceStatus(ServiceState.READY)
        elif self._local.state is ServiceState.CHECKING:
            return
        else:
            local = f" (this host's: {self._local.reason})" if self._local.reason else ""
            status = ServiceStatus(ServiceState.UNAVAILABLE, f"no builder of the cluster is live{local}")
        if status != self._status or offers != self._capabilities.offers:
            self._status = status
            self._capabilities = Capabilities(status, offers)
        self._checked.set()

    # -- the BuildService interface --------------------------------------------------------------------

    async def capabilities(self) -> Capabilities:
        return self._capabilities

    async def wait_ready(self) -> ServiceStatus:
        await self._checked.wait()
        return self._status

    async def project(self, project: str) -> ProjectBuilds:
        version = self._versions.get(project, self._floor)
        snapshot = self._snapshots.get(project)
        if snapshot is not None and snapshot.version == version:
            self._snapshots.move_to_end(project)
            return snapshot
        try:
            records = await self._queue.records(project)
        except psycopg.Error as exc:
            unreachable = f"the cluster database is unreachable: {redact(str(exc)).strip()[:200]}"
            log.warning("cluster_database_unreachable", error=unreachable)
            return snapshot or ProjectBuilds(project, version, False, {}, unreachable)
        final = {r.key: r for r in records if is_final(r)}
        reason = _lacking(records) or self._policy.why_not(project)
        snapshot = self._snapshots[project] = ProjectBuilds(
            project, version, reason is None, final, reason or ""
        )
        if len(self._snapshots) > SNAPSHOTS_KEPT:
            self._snapshots.popitem(last=False)
        return snapshot

    async def submit(self, job: BuildJob) -> BuildProgress | BuildRecord:
        record = await self.record(job.key)
        if record is not None:
            return record
        if not self._capabilities.serves(job.target):
            raise NotOffered(f"no builder of this cluster builds for {job.target}")
        reason = _lacking(await self._queue.records(job.project)) or self._policy.why_not(job.project)
        if reason is not None:
            raise NotOffered(reason)
        return await _outlasting_restarts(lambda: self._queue.enqueue(job, time.time()))

    async def wait(self, key: BuildKey) -> BuildRecord | None:
        while True:
            # The event first, then the look: a notification between the two is not lost.
            changed = self._changed.setdefault(key, asyncio.Event())
            state = await _outlasting_restarts(lambda: self._queue.state(key))
            if state is None or isinstance(state, BuildRecord):
                return state
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), WAIT_POLL_SECONDS)

    async def record(self, key: BuildKey, *, final: bool = True) -> BuildRecord | None:
        state = await self._queue.state(key)
        if not isinstance(state, BuildRecord):
            return None
        return state if not final or is_final(state) else None

    async def records(self, project: str | None = None) -> Sequence[BuildRecord]:
        chosen = await self._queue.records(project)
        return sorted(chosen, key=lambda r: (r.project, r.version, r.key.target))

    async def active(self) -> Sequence[BuildProgress]:
        return await self._queue.active()

    async def counts(self) -> BuildCounts:
        return BuildCounts(**await self._queue.counts())

    async def artifact(self, record: BuildRecord, artifact: Artifact) -> Blob | None:
        sha = artifact_sha256(record, artifact)
        return await self._blobs.get(sha) if sha else None

    async def chunks(self, blob: Blob, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        async for chunk in self._blobs.chunks(blob.key, start, end):
            yield chunk

    async def forget(self, key: BuildKey) -> BuildRecord | None:
        record = await self._queue.forget(key, self._blobs.delete)
        if record is not None:
            self._bump(record.project)
        return record

    async def upstream_changed(self, project: str, sdists: frozenset[str]) -> None:
        now = self._clock.now()
        if await self._queue.set_orphaned(project, sdists, now):
            self._bump(project)
        for record in await self._queue.records(project):
            since = record.orphaned_since
            if since is not None and now - since >= self._policy.orphan_retention:
                await self.forget(record.key)
                log.info("orphan_deleted", project=record.project, sdist=record.sdist_filename)

    def stop_long_polls(self) -> None:
        """The server is shutting down: remote builders' claims answer now rather than hold it up."""
        self._stopping.set()

    def on_finished(self, listener: FinishedListener) -> None:
        self._listeners.append(listener)

    async def close(self) -> None:
        tasks = [*self._tasks, *self._running]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self._pool.close(timeout=5)

    # -- what remote builders ask for (proxy/cluster/farmapi.py) ----------------------------------------

    async def builder_of(self, token: str) -> str | None:
        """The builder ``token`` belongs to (None: unknown or revoked); looked up again after
        ``TOKEN_CACHE_SECONDS``, so a revocation takes effect within that."""
        if not TOKEN_FORMAT.fullmatch(token):
            return None  # not one of ours: no database query for made-up tokens
        now = time.monotonic()
        known = self._tokens.get(token)
        if known is not None and now - known[1] < TOKEN_CACHE_SECONDS:
            self._tokens.move_to_end(token)
            return known[0]
        builder = await self._queue.builder_of_token(token)
        self._tokens[token] = (builder, now)
        self._tokens.move_to_end(token)
        if len(self._tokens) > TOKENS_REMEMBERED:
            self._tokens.popitem(last=False)
        return builder

    async def claim_for(self, builder: str, offer: TargetOffer, poll_seconds: float) -> BuildJob | None:
        """A job for remote ``builder``, waiting up to ``poll_seconds`` for one (a long poll); the
        announcement of its offer doubles as its heartbeat."""
        deadline = time.monotonic() + poll_seconds
        await self._queue.announce(builder, offer)
        while True:
            signal = self._job_signal
            flagged = await self._queue.flagged(builder)
            if flagged is not None:
                raise BuilderFlagged(builder, flagged)
            job = None
            if await self._queue.held_by(builder) < MAX_HELD_BY_A_BUILDER:  # one token cannot take the queue
                job = await self._queue.claim(offer, builder, self._lease, time.time())
            remaining = deadline - time.monotonic()
            if job is not None or remaining <= 0:
                return job
            if self._stopping.is_set():
                return None
            stopping = asyncio.ensure_future(self._stopping.wait())
            new_job = asyncio.ensure_future(signal.wait())
            await asyncio.wait([stopping, new_job], timeout=min(remaining, IDLE_POLL_SECONDS),
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            stopping.cancel()
            new_job.cancel()

    async def holds(self, builder: str, key: BuildKey) -> bool:
        return await self._queue.holds(key, builder) is not None

    async def renew_for(self, builder: str, key: BuildKey) -> bool:
        """A remote builder's lease, renewed for as long as a local build may run (each sandboxed step's time
        limit, ten times over, as the local host bounds its worker): past that the job goes to another."""
        longest = self.limits.timeout_seconds * 10 + 120
        if await self._queue.flagged(builder) is not None:
            return False
        return await self._queue.renew(key, builder, self._lease, time.time() - longest)

    async def accept(
        self, builder: str, key: BuildKey, report: WorkerReport, wheel: Path | None, log_file: Path | None
    ) -> BuildRecord:
        """Verify and record what remote ``builder`` built for ``key``. A wheel that is not what the job
        asked for (another project or version, tags the target cannot install, a broken archive) is
        refused: the job goes back to the queue for another builder and ``builder`` is flagged."""
        job = await self._queue.holds(key, builder)
        if job is None:
            raise NotHeld(
                f"{builder} does not hold the build of {key} (its lease expired, or it never had it)"
            )
        if await self._queue.flagged(builder) is not None:
            raise NotHeld(f"{builder} is flagged: its uploads are not taken")
        inspection = None
        if report.ok:
            if wheel is None:
                await self._refuse(builder, key, "the report says the build succeeded, but no wheel was sent")
            assert wheel is not None
            if not _wheel_named(report.wheel_filename, wheel):
                await self._refuse(
                    builder, key, f"the report names {report.wheel_filename!r}, not the wheel sent"
                )
            try:
                inspection = await asyncio.to_thread(
                    inspect_wheel, wheel, project=job.project, version=job.version, target=job.target,
                    limits=self.limits,
                )  # fmt: skip
            except BadWheel as exc:
                await self._refuse(builder, key, f"the uploaded wheel was refused: {exc}")
        if not report.ok:
            report = dataclasses.replace(report, wheel_filename="")  # a failure names no wheel to serve
        record = finished_record(
            job,
            report,
            # A remote builder's failure is its word only: never final (a client asking again has it built
            # again), and never the project-wide "lacks a toolchain" verdict a local failure can give.
            builder=BUILDER_VERSION if report.ok else REMOTE_FAILURE,
            made_by=builder,
        )

        async def store() -> BuildRecord:
            stored = record
            if inspection is not None and wheel is not None:
                stored_wheel = await self._blobs.put(wheel)
                metadata = await self._blobs.put(inspection.metadata)  # read from the wheel itself
                provenance = await self._blobs.put(
                    orjson.dumps({**report.provenance, "builder": builder}, option=orjson.OPT_INDENT_2)
                )
                stored = dataclasses.replace(
                    stored, wheel_sha256=stored_wheel.sha256, wheel_size=stored_wheel.blob.size,
                    metadata_sha256=metadata.sha256, provenance_sha256=provenance.sha256,
                )  # fmt: skip
            if log_file is not None:
                log_blob = await self._blobs.put(log_file)
            else:
                log_blob = await self._blobs.put(f"build failed in {report.phase}: {report.error}\n".encode())
            return dataclasses.replace(stored, log_sha256=log_blob.sha256)

        recorded = await self._record(store, builder)
        if recorded is None:
            raise NotHeld(f"{builder} lost the build of {key} while it uploaded")
        record = recorded
        self._bump(job.project)
        for listener in self._listeners:
            listener(record)
        log.info("build_finished", project=job.project, version=job.version, target=key.target,
                 state=record.state.value, builder=builder)  # fmt: skip
        return record

    async def _record(self, store: Callable[[], Awaitable[BuildRecord]], builder: str) -> BuildRecord | None:
        """Store a build's artifacts and record it; again while a blob it stored was deleted in between
        (by forget() of a build that shared it); None when ``builder`` lost the job meanwhile."""
        for _ in range(5):
            record = await store()
            shas = artifact_shas(record)
            finished = await _outlasting_restarts(
                functools.partial(self._queue.finish, record, shas, builder, self._blob_stored)
            )
            if finished is Finished.RECORDED:
                return record
            if finished is Finished.LOST:
                await self._drop_unnamed(shas)
                return None
        raise RuntimeError("the build's artifacts kept disappearing from the shared store")

    async def _blob_stored(self, sha: str) -> bool:
        return await self._blobs.get(sha) is not None

    async def _drop_unnamed(self, shas: list[str]) -> None:
        """Artifacts stored for a result that was not recorded: deleted unless some build names them."""
        for sha in shas:
            await self._queue.delete_if_unnamed(sha, self._blobs.delete)

    async def _refuse(self, builder: str, key: BuildKey, reason: str) -> NoReturn:
        log.warning("builder_upload_refused", builder=builder, key=str(key), reason=reason)
        await self._queue.flag(builder, reason)
        await self._queue.release(key, builder, time.time())
        raise UploadRefused(reason)

    async def builders(self) -> Sequence[BuilderView]:
        return await self._queue.builders(self._lease)

    # -- notifications ----------------------------------------------------------------------------------

    def _bump(self, project: str) -> None:
        self._counter += 1
        self._versions[project] = self._floor + self._counter
        self._snapshots.pop(project, None)

    def _signal_job(self) -> None:
        signal, self._job_signal = self._job_signal, asyncio.Event()
        signal.set()

    def _forget_everything(self) -> None:
        """Notifications may have been missed: every snapshot is suspect, every waiter looks again."""
        self._floor += self._counter + 1
        self._counter = 0
        self._versions.clear()
        self._snapshots.clear()
        for event in self._changed.values():
            event.set()
        self._changed.clear()
        self._jobs.set()
        self._signal_job()

    async def _listen(self) -> None:
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {BUILDS_CHANNEL}")
                    await conn.execute(f"LISTEN {JOBS_CHANNEL}")
                    self._forget_everything()
                    async for notice in conn.notifies():
                        if notice.channel == JOBS_CHANNEL:
                            self._jobs.set()
                            self._signal_job()
                        else:
                            self._notified(notice.payload)
            except psycopg.Error as exc:
                log.warning("cluster_notifications_lost", error=redact(str(exc)).strip()[:300])
            self._forget_everything()
            await asyncio.sleep(RECONNECT_SECONDS)

    def _notified(self, payload: str) -> None:
        try:
            data = orjson.loads(payload)
            project, key = str(data["project"]), str(data["key"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        self._bump(project)
        sha, _, target = key.partition("/")
        event = self._changed.pop(BuildKey(sha, target), None)
        if event is not None:
            event.set()

    async def _requeue_expired(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self._lease / 3))
            try:
                for key in await self._queue.requeue_expired(time.time()):
                    log.warning("build_lease_expired", key=str(key))
            except psycopg.Error as exc:
                log.warning("cluster_lease_check_failed", error=redact(str(exc)).strip()[:300])

    # -- this host's builder ----------------------------------------------------------------------------

    async def _builder_slot(self) -> None:
        assert self._host is not None
        offer = self._host.offer
        while True:
            try:
                job = await self._queue.claim(offer, self.builder_id, self._lease, time.time())
            except psycopg.Error as exc:
                log.warning("cluster_claim_failed", error=redact(str(exc)).strip()[:300])
                job = None
            if job is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._jobs.wait(), IDLE_POLL_SECONDS)
                self._jobs.clear()
                continue
            build = asyncio.create_task(self._build(job), name=f"build {job.key}")
            self._running.add(build)
            try:
                await asyncio.shield(build)
            finally:
                self._running.discard(build)

    async def _build(self, job: BuildJob) -> None:
        assert self._host is not None
        renewing = asyncio.create_task(self._renew(job.key), name=f"lease {job.key}")
        try:
            sdist, failure = await fetch_within(self._fetch_sdist, job, self._fetch_timeout)
            if sdist is None:
                await self._keep(job, failure or WorkerReport.failure(Phase.FETCH, "no sdist"), None)
            else:
                await self._host.build(job, sdist, lambda report, folder: self._keep(job, report, folder))
        except Exception as exc:  # a build's failure must never end this slot
            log.exception("cluster_build_crashed", key=str(job.key), error=str(exc))
        finally:
            renewing.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await renewing

    async def _renew(self, key: BuildKey) -> None:
        while True:
            await asyncio.sleep(self._lease / 3)
            try:
                if not await self._queue.renew(key, self.builder_id, self._lease):
                    log.warning("build_lease_lost", key=str(key))
                    return
            except psycopg.Error as exc:
                log.warning("build_lease_not_renewed", key=str(key), error=redact(str(exc)).strip()[:300])

    async def _keep(self, job: BuildJob, report: WorkerReport, folder: BuildFolder | None) -> BuildRecord:
        record = finished_record(job, report, made_by=self.builder_id)  # the queue time is the database's
        kept = await self._record(
            lambda: store_artifacts(self._blobs, record, report, folder), self.builder_id
        )
        if kept is None:
            log.warning("build_result_dropped", key=str(job.key), reason="the lease was lost meanwhile")
            return record
        record = kept
        self._bump(job.project)
        for listener in self._listeners:
            listener(record)
        log.info(
            "build_finished",
            project=job.project,
            version=job.version,
            target=job.target.id,
            state=record.state.value,
            seconds=round(record.duration, 2),
            builder=self.builder_id,
        )
        await self._prune()
        return record

    async def _prune(self) -> None:
        limit = self._policy.max_builds
        if limit <= 0:
            return
        counts = await self._queue.counts()
        excess = counts["done"] + counts["failed"] - limit
        if excess > 0:
            for key in await self._queue.oldest_finished(excess):
                await self.forget(key)


async def _outlasting_restarts(operation: Callable[[], Awaitable[T]]) -> T:
    """``operation``, tried again while the database is unreachable (a restart, a fail-over) for up to
    ``OUTLAST_SECONDS``: a finished build must be recorded, a waiting client must not get a 500 for it."""
    deadline = time.monotonic() + OUTLAST_SECONDS
    while True:
        try:
            return await operation()
        except psycopg.OperationalError as exc:
            if time.monotonic() > deadline:
                raise
            log.warning("cluster_database_retry", error=redact(str(exc)).strip()[:300])
            await asyncio.sleep(RECONNECT_SECONDS)


def _wheel_named(filename: str, wheel: Path) -> bool:
    """The report's wheel name is the one the farm will serve: it must be a plain wheel name."""
    return filename.endswith(".whl") and "/" not in filename and filename == wheel.name


class NotHeld(RuntimeError):
    pass


class UploadRefused(ValueError):
    pass


class BuilderFlagged(PermissionError):
    def __init__(self, builder: str, reason: str) -> None:
        super().__init__(f"builder {builder} is flagged and gets no jobs: {reason}")


def _lacking(records: Sequence[BuildRecord]) -> str | None:
    """The first of ``records`` that found its project needs a toolchain this builder lacks."""
    return next((why for record in records if (why := lacking_toolchain(record)) is not None), None)
