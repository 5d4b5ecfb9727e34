"""The job source of a cluster process's own builder (builder/loop.py): jobs claimed from the PostgreSQL
queue under a lease it renews, sdists from this process's file store, results recorded through
ClusterRecords, exactly as a remote builder's are after the farm checked them (proxy/cluster/remote.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from pathlib import Path

import psycopg
import structlog

from builder.jobs import BuildJob, BuildKey, TargetOffer
from builder.protocol import WorkerReport
from builder.workdir import BuildFolder
from proxy.builds.embedded import SdistFetcher
from proxy.builds.finished import fetch_within, finished_record
from proxy.builds.records import store_artifacts
from proxy.cluster.notices import IDLE_POLL_SECONDS, Notices
from proxy.cluster.records import ClusterRecords
from proxy.redact import redact

log = structlog.get_logger(__name__)


class ClusterJobSource:
    def __init__(
        self,
        builder: str,
        records: ClusterRecords,
        notices: Notices,
        fetch_sdist: SdistFetcher,
        fetch_timeout: float,
        lease_seconds: float,
    ) -> None:
        self.builder = builder
        self._records = records
        self._queue = records.queue
        self._notices = notices
        self._fetch_sdist = fetch_sdist
        self._fetch_timeout = fetch_timeout
        self._lease = lease_seconds
        self.renew_seconds: float | None = lease_seconds / 3
        self._seconds: dict[BuildKey, BuildJob] = {}  # the second builds (reproducibility) held here

    async def claim(self, offer: TargetOffer) -> BuildJob | None:
        new_job = self._notices.new_job()  # before the look: a job queued meanwhile still wakes us
        try:
            job = await self._queue.claim(offer, self.builder, self._lease, time.time())
            if job is None:  # a quiet moment: a wheel's second build
                job = await self._records.claim_second(offer, self.builder, self._lease)
                if job is not None:
                    self._seconds[job.key] = job
        except psycopg.Error as exc:
            log.warning("cluster_claim_failed", error=redact(str(exc)).strip()[:300])
            job = None
        if job is None:
            await _wait(new_job, IDLE_POLL_SECONDS)
        return job

    async def sdist(self, job: BuildJob) -> Path | WorkerReport:
        return await fetch_within(self._fetch_sdist, job, self._fetch_timeout)

    def started(self, job: BuildJob) -> None:
        pass  # the queue marked it running when it was claimed

    def _second(self, job: BuildJob) -> bool:
        return self._seconds.get(job.key) is job

    async def renew(self, job: BuildJob) -> bool:
        try:
            if self._second(job):
                return await self._records.seconds.renew(job.key, self.builder, self._lease)
            return await self._queue.renew(job.key, self.builder, self._lease)
        except psycopg.Error as exc:  # the lease may still hold: try again at the next renewal
            log.warning("build_lease_not_renewed", key=str(job.key), error=redact(str(exc)).strip()[:300])
            return True

    async def keep(self, job: BuildJob, report: WorkerReport, folder: BuildFolder | None) -> None:
        if self._second(job):
            wheel = folder.result / report.wheel_filename if report.ok and folder is not None else None
            await self._records.judge(job.key, self.builder, report, wheel, remote=False)
            return
        record = finished_record(job, report, made_by=self.builder)  # the queue time is the database's
        kept = await self._records.record(
            lambda: store_artifacts(self._records.blobs, record, report, folder, self._records.attestor),
            self.builder,
        )
        if kept is None:
            log.warning("build_result_dropped", key=str(job.key), reason="the lease was lost meanwhile")

    async def finished(self, job: BuildJob) -> None:
        # Clients wait on the queue's notice, sent when the build was recorded.
        if self._second(job):
            del self._seconds[job.key]

    async def abandon(self, job: BuildJob, error: str) -> None:
        """Back to the queue for another try (by any builder), counted as an attempt."""
        log.warning("build_released", key=str(job.key), error=error)
        if self._second(job):
            await self._records.seconds.release(job.key, self.builder)
            return
        await self._queue.release(job.key, self.builder, time.time())


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), seconds)
