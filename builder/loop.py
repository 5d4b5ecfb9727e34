"""A builder's loop, the one build path: take a job from a source, get its sdist, build it on this host
(builder/host.py), hand back what it left, renew the job's lease meanwhile.

Every builder runs this loop; only the job source differs:

- the embedded default: the farm's own queue, in this process (proxy/builds/localqueue.py);
- a cluster process's builder: the cluster's PostgreSQL queue (proxy/cluster/localsource.py);
- ``wheelfarm builder run --farm URL``: a farm over HTTP (builder/remote.py), whose claim, lease and result
  endpoints (proxy/cluster/farmapi.py) are the same steps as the methods below.

A source answers ``claim`` with a job it holds for this builder, or None once it has waited as long as it
waits (a notification, a long poll, a few seconds); anything ``claim`` raises ends the loop (a refused
token). A job's end is always reported: kept with its report, or abandoned with the reason, so no waiting
client hangs on a build that crashed here.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Protocol

import structlog

from builder.host import BuildHost
from builder.jobs import BuildJob, TargetOffer
from builder.protocol import WorkerReport
from builder.workdir import BuildFolder

log = structlog.get_logger(__name__)


class JobSource(Protocol):
    @property
    def renew_seconds(self) -> float | None:
        """Seconds between lease renewals while a job is held; None: the job cannot be lost (one process)."""
        ...

    async def claim(self, offer: TargetOffer) -> BuildJob | None: ...

    async def sdist(self, job: BuildJob) -> Path | WorkerReport:
        """The job's sdist, its sha256 checked, or the failure to get it (within the source's time limit)."""
        ...

    def started(self, job: BuildJob) -> None:
        """The job took a worker slot: it is building now."""

    async def renew(self, job: BuildJob) -> bool:
        """Extend this builder's lease on ``job``; False: the job is lost, renewing ends."""
        ...

    async def keep(self, job: BuildJob, report: WorkerReport, folder: BuildFolder | None) -> None:
        """How the job ended, with its work folder still there to take the artifacts from."""

    async def finished(self, job: BuildJob) -> None:
        """The work folder is gone: the job is over here."""

    async def abandon(self, job: BuildJob, error: str) -> None:
        """The job could not be finished here (a crash of this host's, not the package's)."""


class BuilderLoop:
    """``claims`` loops, each holding at most one job from claim to end: as many as the host has slots for
    a cluster's builders (a job waiting here for a slot is a job another builder could build), more for
    the embedded pool, so sdists still downloading do not keep the slots idle."""

    def __init__(self, host: BuildHost, source: JobSource, claims: int) -> None:
        self.host = host
        self._source = source
        self._claims = max(1, claims)

    async def run(self) -> None:
        """Until cancelled, or until the source's ``claim`` raises (re-raised here)."""
        offer = self.host.offer
        claimers = [asyncio.create_task(self._claimer(offer), name=f"claim {n}") for n in range(self._claims)]
        try:
            done, _ = await asyncio.wait(claimers, return_when=asyncio.FIRST_EXCEPTION)
            for task in done:
                task.result()
        finally:
            for task in claimers:
                task.cancel()
            await asyncio.gather(*claimers, return_exceptions=True)

    async def _claimer(self, offer: TargetOffer) -> None:
        while True:
            job = await self._source.claim(offer)
            if job is not None:
                await self.build(job)

    async def build(self, job: BuildJob) -> None:
        source = self._source
        renewing = None
        if source.renew_seconds is not None:
            renewing = asyncio.create_task(self._renew(job, source.renew_seconds), name=f"lease {job.key}")
        try:
            sdist = await source.sdist(job)
            if isinstance(sdist, WorkerReport):
                await source.keep(job, sdist, None)
            else:
                await self.host.build(
                    job, sdist, lambda report, folder: source.keep(job, report, folder),
                    lambda: source.started(job),
                )  # fmt: skip
        except Exception as exc:  # a build's crash must end neither this loop nor its waiting clients
            log.exception("build_crashed", key=str(job.key), error=str(exc))
            with contextlib.suppress(Exception):
                await source.abandon(job, f"the build crashed on this host: {exc}")
        finally:
            if renewing is not None:
                renewing.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await renewing
            await source.finished(job)

    async def _renew(self, job: BuildJob, every: float) -> None:
        while True:
            await asyncio.sleep(every)
            if not await self._source.renew(job):
                log.warning("build_lease_lost", project=job.project, target=job.target.id)
                return
