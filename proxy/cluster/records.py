"""The cluster's build records: a finished build's artifacts go into the shared blob store and its row in
PostgreSQL says so; a forgotten build takes its artifacts along unless another build names them; past
``max_builds`` the oldest go. This host's builder (proxy/cluster/localsource.py) and remote builders
(proxy/cluster/remote.py) record through here, so a record means the same whoever made it.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

import psycopg
import structlog

from builder.jobs import BuildJob, BuildKey, BuildRecord, TargetOffer
from builder.protocol import WorkerReport
from proxy.builds.finished import announce
from proxy.builds.judge import awaits_verdict, judged, judges, verdict_on
from proxy.builds.records import artifact_shas
from proxy.builds.service import FinishedListener
from proxy.cluster.notices import RECONNECT_SECONDS, Notices
from proxy.cluster.queue import BuildQueue, Finished
from proxy.cluster.seconds import SecondBuilds
from proxy.provenance.attest import Attestor
from proxy.redact import redact
from proxy.storage.blobs import BlobStore

log = structlog.get_logger(__name__)
T = TypeVar("T")

OUTLAST_SECONDS = 120.0
STORE_ATTEMPTS = 5


class ClusterRecords:
    def __init__(
        self,
        queue: BuildQueue,
        blobs: BlobStore,
        notices: Notices,
        max_builds: int,
        attestor: Attestor | None = None,
        reproduce: bool = True,
    ) -> None:
        self.queue = queue
        self.seconds = SecondBuilds(queue.pool)
        self.reproduce = reproduce  # every wheel built gets a second build, by another builder if one is live
        self.blobs = blobs
        self.attestor = attestor  # signs each built wheel's statement: held by the farm, never by builders
        self._notices = notices
        self._max_builds = max_builds
        self.listeners: list[FinishedListener] = []

    async def record(self, store: Callable[[], Awaitable[BuildRecord]], builder: str) -> BuildRecord | None:
        """Store a build's artifacts (``store``) and record it as ``builder``'s; stored again while a blob it
        stored was deleted in between (by forget() of a build that shared it). None: ``builder`` lost the job
        meanwhile, and nothing is recorded."""
        for _ in range(STORE_ATTEMPTS):
            record = await store()
            shas = artifact_shas(record)
            finished = await outlasting_restarts(
                functools.partial(self.queue.finish, record, shas, builder, self._blob_stored)
            )
            if finished is Finished.RECORDED:
                self._announce(record, builder)
                if self.reproduce and awaits_verdict(record):
                    queue_second = functools.partial(self.seconds.queue_unjudged, time.time(), record.key)
                    await outlasting_restarts(queue_second)
                await self._prune()
                return record
            if finished is Finished.LOST:
                await self._drop_unnamed(shas)
                return None
        raise RuntimeError("the build's artifacts kept disappearing from the shared store")

    async def claim_second(self, offer: TargetOffer, builder: str, lease: float) -> BuildJob | None:
        """At a builder's quiet moment (no first build for it), a wheel's second build it may take (the
        live builders decide whether it is the only machine for the target); None with second builds off."""
        if not self.reproduce:
            return None
        others = await self.queue.live_offers(lease)
        return await self.seconds.claim(offer, builder, lease, others)

    async def judge(
        self, key: BuildKey, builder: str, report: WorkerReport, wheel: Path | None, *, remote: bool
    ) -> BuildRecord | None:
        """Judge ``builder``'s second build of ``key`` (``report``, its wheel at ``wheel``) against the wheel
        served, and record the verdict with the statement signed again. None: nothing to judge any more
        (the build was forgotten, built anew or judged meanwhile, or ``builder`` lost the second build)."""
        if not judges(report, remote=remote):  # not the package's verdict: another try, by any builder
            log.warning("second_build_released", key=str(key), builder=builder, phase=report.phase)
            await self.seconds.release(key, builder)
            return None
        held = await self.seconds.holds(key, builder)
        state = await self.queue.state(key)
        if held is None or not isinstance(state, BuildRecord) or state.wheel_sha256 != held[1]:
            await self.seconds.drop(key, builder)
            return None
        verdict = await verdict_on(self.blobs, state, report, wheel) if awaits_verdict(state) else None
        if verdict is None:
            await self.seconds.drop(key, builder)
            return None
        result = await judged(self.blobs, state, verdict, builder, self.attestor)
        before = {sha for sha in (state.attestation_sha256, state.pep740_sha256) if sha}
        after = {sha for sha in (result.attestation_sha256, result.pep740_sha256) if sha}
        recorded = await outlasting_restarts(
            functools.partial(self.seconds.record_verdict, result, sorted(after), builder, self._blob_stored)
        )
        if not recorded:
            await self._drop_unnamed(sorted(after - before))  # the new signature's blobs
            return None
        await self._drop_unnamed(sorted(before - after))  # the old signature's
        self._notices.build_changed(state.project)
        return result

    async def forget(self, key: BuildKey) -> BuildRecord | None:
        record = await self.queue.forget(key, self.blobs.delete)
        if record is not None:
            self._notices.build_changed(record.project)
        return record

    def _announce(self, record: BuildRecord, builder: str) -> None:
        self._notices.build_changed(record.project)
        announce(record, self.listeners, builder=builder)

    async def _blob_stored(self, sha: str) -> bool:
        return await self.blobs.get(sha) is not None

    async def _drop_unnamed(self, shas: list[str]) -> None:
        """Artifacts stored for a result that was not recorded: deleted unless some build names them."""
        for sha in shas:
            await self.queue.delete_if_unnamed(sha, self.blobs.delete)

    async def _prune(self) -> None:
        """Past ``max_builds`` finished records, the oldest go."""
        if self._max_builds <= 0:
            return
        counts = await self.queue.counts()
        excess = counts["done"] + counts["failed"] - self._max_builds
        if excess > 0:
            for key in await self.queue.oldest_finished(excess):
                await self.forget(key)


async def outlasting_restarts(operation: Callable[[], Awaitable[T]]) -> T:
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
