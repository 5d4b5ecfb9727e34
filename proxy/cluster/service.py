"""The build service of a cluster: the queue and records in PostgreSQL, the artifacts in a blob store every
process reaches, and this host's builder taking jobs from the queue like any other builder.

Every process of the cluster answers for all of it: a build submitted through one process is queued once
(the key is the row's primary key), built by whichever builder claims it (this host's, through
proxy/cluster/localsource.py, or a remote one, through proxy/cluster/remotebuilders.py: both take the same
steps as builder/loop.py), recorded through proxy/cluster/records.py, and the clients waiting in every
process wake when its notice arrives (proxy/cluster/notices.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import AsyncIterator, Sequence

import psycopg
import structlog

from builder.host import BuildHost
from builder.jobs import (
    Artifact,
    BuildJob,
    BuildKey,
    BuildProgress,
    BuildRecord,
    Limits,
    TargetOffer,
    artifact_sha256,
)
from builder.loop import BuilderLoop
from proxy.builds.embedded import BuildPolicy, SdistFetcher
from proxy.builds.finished import is_final, lacking_toolchain
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
from proxy.cluster.localsource import ClusterJobSource
from proxy.cluster.notices import Notices
from proxy.cluster.queue import BuildQueue, Pool
from proxy.cluster.records import ClusterRecords, outlasting_restarts
from proxy.cluster.remotebuilders import RemoteBuilders
from proxy.provenance.attest import Attestor
from proxy.redact import redact
from proxy.storage.blobs import Blob, BlobStore

log = structlog.get_logger(__name__)

WAIT_POLL_SECONDS = 5.0  # a waiting client looks at its build this often even without a notification
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
        attestor: Attestor | None = None,
    ) -> None:
        self._queue = BuildQueue(pool)
        self.pool = pool
        self._host = host
        self._policy = policy
        self._clock = clock
        self._lease = lease_seconds
        self._notices = Notices(database_url)
        self._records = ClusterRecords(
            self._queue, blobs, self._notices, policy.max_builds, attestor, reproduce=policy.reproduce
        )
        self._blobs = blobs
        self.remote = RemoteBuilders(self._records, self._notices, lease_seconds, limits or Limits())
        self.builder_id = f"{socket.gethostname()}:{os.getpid()}"
        self._source = ClusterJobSource(
            self.builder_id, self._records, self._notices, fetch_sdist, fetch_timeout, lease_seconds
        )
        self._status = ServiceStatus(ServiceState.CHECKING)
        self._capabilities = Capabilities(self._status)
        self._checked = asyncio.Event()  # the builder's start-up check is over (passed or not)
        self._local = ServiceStatus(ServiceState.CHECKING)  # this host's builder
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.pool.open(wait=True, timeout=30)
        self._tasks.append(asyncio.create_task(self._notices.listen(), name="cluster notifications"))
        if self._policy.reproduce:
            queued = await outlasting_restarts(lambda: self._records.seconds.queue_unjudged(time.time()))
            if queued:
                log.info("second_builds_queued", count=queued)
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
        # As many claims as slots: a job waiting here for a slot is one another builder could build.
        loop = BuilderLoop(self._host, self._source, claims=self._host.settings.workers)
        self._tasks.append(asyncio.create_task(loop.run(), name="builder"))

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

    async def _requeue_expired(self) -> None:
        while True:
            await asyncio.sleep(max(1.0, self._lease / 3))
            try:
                for key in await self._queue.requeue_expired(time.time()):
                    log.warning("build_lease_expired", key=str(key))
                if await self._records.seconds.requeue_expired():
                    log.warning("second_build_lease_expired")
            except psycopg.Error as exc:
                log.warning("cluster_lease_check_failed", error=redact(str(exc)).strip()[:300])

    # -- the BuildService interface --------------------------------------------------------------------

    async def capabilities(self) -> Capabilities:
        return self._capabilities

    async def wait_ready(self) -> ServiceStatus:
        await self._checked.wait()
        return self._status

    async def project(self, project: str) -> ProjectBuilds:
        snapshots = self._notices.snapshots
        snapshot = snapshots.current(project)
        if snapshot is not None:
            return snapshot
        version = snapshots.version(project)
        try:
            records = await self._queue.records(project)
        except psycopg.Error as exc:
            unreachable = f"the cluster database is unreachable: {redact(str(exc)).strip()[:200]}"
            log.warning("cluster_database_unreachable", error=unreachable)
            return snapshot or ProjectBuilds(project, version, False, {}, unreachable)
        final = {r.key: r for r in records if is_final(r)}
        reason = _lacking(records) or self._policy.why_not(project)
        return snapshots.keep(ProjectBuilds(project, version, reason is None, final, reason or ""))

    async def submit(self, job: BuildJob) -> BuildProgress | BuildRecord:
        record = await self.record(job.key)
        if record is not None:
            return record
        if not self._capabilities.serves(job.target):
            raise NotOffered(f"no builder of this cluster builds for {job.target}")
        reason = _lacking(await self._queue.records(job.project)) or self._policy.why_not(job.project)
        if reason is not None:
            raise NotOffered(reason)
        return await outlasting_restarts(lambda: self._queue.enqueue(job, time.time()))

    async def wait(self, key: BuildKey) -> BuildRecord | None:
        while True:
            changed = self._notices.watch(key)
            state = await outlasting_restarts(lambda: self._queue.state(key))
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

    async def by_wheel(self, sha256: str, *, metadata: bool = False) -> BuildRecord | None:
        return await self._queue.by_wheel(sha256, metadata=metadata)

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
        return await self._records.forget(key)

    async def upstream_changed(self, project: str, sdists: frozenset[str]) -> None:
        now = self._clock.now()
        if await self._queue.set_orphaned(project, sdists, now):
            self._notices.build_changed(project)
        for record in await self._queue.records(project):
            since = record.orphaned_since
            if since is not None and now - since >= self._policy.orphan_retention:
                await self.forget(record.key)
                log.info("orphan_deleted", project=record.project, sdist=record.sdist_filename)

    async def builders(self) -> Sequence[BuilderView]:
        return await self._queue.builders(self._lease)

    def on_finished(self, listener: FinishedListener) -> None:
        self._records.listeners.append(listener)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.pool.close(timeout=5)


def _lacking(records: Sequence[BuildRecord]) -> str | None:
    """The first of ``records`` that found its project needs a toolchain this builder lacks."""
    return next((why for record in records if (why := lacking_toolchain(record)) is not None), None)
