"""The build queue of one process (the embedded default): the cluster queue's steps, in memory.

A job is queued once per key, claimed by a builder loop whose offer serves its target, marked started when it
takes a worker slot, and ended with its record; clients waiting on it wake then. Nothing is leased: the
builder runs in this process and dies with it, and so does the queue.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from builder.jobs import BuildJob, BuildKey, BuildProgress, BuildRecord, TargetOffer


@dataclass(eq=False)
class _Queued:
    job: BuildJob
    queued_at: float
    started_at: float | None = None
    claimed: bool = False
    ended: asyncio.Future[BuildRecord | None] = field(default_factory=asyncio.Future)

    @property
    def progress(self) -> BuildProgress:
        return BuildProgress(self.job, self.queued_at, self.started_at)


class LocalQueue:
    def __init__(self) -> None:
        self._jobs: dict[BuildKey, _Queued] = {}  # in the order they were queued
        self._new = asyncio.Event()

    def enqueue(self, job: BuildJob, now: float) -> BuildProgress:
        """Queue ``job`` unless its key is queued or building already; where the key is now."""
        queued = self._jobs.get(job.key)
        if queued is None:
            queued = self._jobs[job.key] = _Queued(job, now)
            self._new.set()
        return queued.progress

    async def claim(
        self, offer: TargetOffer, otherwise: Callable[[], BuildJob | None] = lambda: None
    ) -> BuildJob:
        """The oldest unclaimed job ``offer`` serves; when there is none, what ``otherwise`` gives (the
        embedded service's second builds, at a quiet moment); waiting, until either has one, for a job to
        be queued or to end, or for ``wake``."""
        while True:
            self._new.clear()  # before the look, with no await between: nothing that happens after is missed
            job = self._claim_now(offer) or otherwise()
            if job is not None:
                return job
            await self._new.wait()

    def _claim_now(self, offer: TargetOffer) -> BuildJob | None:
        for queued in self._jobs.values():
            if not queued.claimed and offer.serves(queued.job.target):
                queued.claimed = True
                return queued.job
        return None

    def wake(self) -> None:
        self._new.set()

    def started(self, key: BuildKey, now: float) -> None:
        queued = self._jobs.get(key)
        if queued is not None:
            queued.started_at = now

    def queued_at(self, key: BuildKey) -> float | None:
        queued = self._jobs.get(key)
        return queued.queued_at if queued is not None else None

    def end(self, key: BuildKey, record: BuildRecord | None) -> None:
        """The job is over (``record``: how it ended; None: it was cancelled); its waiters wake."""
        queued = self._jobs.pop(key, None)
        if queued is not None and not queued.ended.done():
            queued.ended.set_result(record)
        self._new.set()  # a quiet moment may have begun (a second build waits for one)

    def holds(self, key: BuildKey) -> bool:
        return key in self._jobs

    def progress(self, key: BuildKey) -> BuildProgress | None:
        queued = self._jobs.get(key)
        return queued.progress if queued is not None else None

    async def wait(self, key: BuildKey) -> BuildRecord | None:
        """How the job of ``key`` ended, once it has (None: it was not queued, or it was cancelled)."""
        queued = self._jobs.get(key)
        if queued is None:
            return None
        # Shielded: a waiting client that gives up (its timeout, a hang-up) must not end the job for others.
        return await asyncio.shield(queued.ended)

    def active(self) -> list[BuildProgress]:
        return [queued.progress for queued in self._jobs.values()]

    def close(self) -> None:
        for key in list(self._jobs):
            self.end(key, None)
