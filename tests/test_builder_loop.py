"""The one build path's pure parts: the builder loop over any job source (builder/loop.py) and the
embedded queue (proxy/builds/localqueue.py). Real builds through the loop are in every build test (the
embedded pool), tests/test_cluster.py (a cluster process's builder, remote builders)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from builder.jobs import BuildJob, BuildRecord, BuildState, TargetOffer
from builder.loop import BuilderLoop
from builder.protocol import WorkerReport
from builder.tags import Target
from builder.workdir import BuildFolder
from proxy.builds.localqueue import LocalQueue

OFFER = TargetOffer("manylinux", "x86_64", (11, 12))


def _job(n: int, python: int = 11) -> BuildJob:
    sha = f"{n:064x}"
    target = Target((3, python), "manylinux_2_17_x86_64")
    return BuildJob(f"p{n}", "1.0", f"p{n}-1.0.tar.gz", sha, f"/files/{sha}", target)


class _Host:
    """What BuilderLoop asks of a BuildHost: its offer, and a build that calls back as the real one does."""

    def __init__(self, build: Callable[[BuildJob], Awaitable[WorkerReport]]) -> None:
        self.offer = OFFER
        self._build = build

    async def build(
        self,
        job: BuildJob,
        sdist: Path,
        keep: Callable[[WorkerReport, BuildFolder | None], Awaitable[None]],
        started: Callable[[], None],
    ) -> None:
        started()
        await keep(await self._build(job), None)


class _Source:
    def __init__(self, jobs: list[BuildJob], renew_seconds: float | None = None) -> None:
        self._jobs = jobs
        self.renew_seconds = renew_seconds
        self.events: list[tuple[str, str]] = []
        self.renewals = 0
        self.lose_lease = False
        self.idle = asyncio.Event()

    async def claim(self, offer: TargetOffer) -> BuildJob | None:
        if not self._jobs:
            self.idle.set()
            await asyncio.sleep(0.01)
            return None
        return self._jobs.pop(0)

    async def sdist(self, job: BuildJob) -> Path | WorkerReport:
        return Path("/nonexistent") / job.sdist_filename

    def started(self, job: BuildJob) -> None:
        self.events.append(("started", job.project))

    async def renew(self, job: BuildJob) -> bool:
        self.renewals += 1
        return not self.lose_lease

    async def keep(self, job: BuildJob, report: WorkerReport, folder: BuildFolder | None) -> None:
        self.events.append(("kept", job.project))

    async def finished(self, job: BuildJob) -> None:
        self.events.append(("finished", job.project))

    async def abandon(self, job: BuildJob, error: str) -> None:
        self.events.append(("abandoned", job.project))


async def _run_until_idle(loop: BuilderLoop, source: _Source) -> None:
    running = asyncio.create_task(loop.run())
    await asyncio.wait_for(source.idle.wait(), 10)
    running.cancel()
    await asyncio.gather(running, return_exceptions=True)


def _loop(
    source: _Source, build: Callable[[BuildJob], Awaitable[WorkerReport]], claims: int = 1
) -> BuilderLoop:
    host: Any = _Host(build)
    return BuilderLoop(host, source, claims)


def test_a_crashed_build_is_abandoned_and_the_loop_goes_on() -> None:
    async def build(job: BuildJob) -> WorkerReport:
        if job.project == "p1":
            raise OSError("disk gone")
        return WorkerReport(ok=True, wheel_filename="p2-1.0-py3-none-any.whl")

    async def main() -> list[tuple[str, str]]:
        source = _Source([_job(1), _job(2)])
        await _run_until_idle(_loop(source, build), source)
        return source.events

    assert asyncio.run(main()) == [
        ("started", "p1"), ("abandoned", "p1"), ("finished", "p1"),
        ("started", "p2"), ("kept", "p2"), ("finished", "p2"),
    ]  # fmt: skip


def test_a_claim_that_raises_ends_the_loop() -> None:
    class Refused(Exception):
        pass

    class RefusingSource(_Source):
        async def claim(self, offer: TargetOffer) -> BuildJob | None:
            raise Refused("token revoked")

    async def main() -> None:
        loop = _loop(RefusingSource([]), lambda job: asyncio.sleep(0, WorkerReport(ok=True)), claims=3)
        await asyncio.wait_for(loop.run(), 5)

    with pytest.raises(Refused):
        asyncio.run(main())


def test_the_lease_is_renewed_while_building_and_no_more_once_lost() -> None:
    async def main() -> tuple[int, int]:
        source = _Source([_job(1)], renew_seconds=0.02)

        async def build(job: BuildJob) -> WorkerReport:
            await asyncio.sleep(0.2)
            return WorkerReport(ok=True)

        await _run_until_idle(_loop(source, build), source)
        held = source.renewals
        lost = _Source([_job(2)], renew_seconds=0.02)
        lost.lose_lease = True
        await _run_until_idle(_loop(lost, build), lost)
        return held, lost.renewals

    held, lost = asyncio.run(main())
    assert held >= 4, f"renewed {held} times in 0.2 s at 0.02 s"
    assert lost == 1, "renewing went on after the lease was lost"


def test_the_local_queue_deduplicates_routes_by_offer_and_wakes_waiters() -> None:
    async def main() -> None:
        queue = LocalQueue()
        first = queue.enqueue(_job(1, python=13), 1.0)  # no builder here serves 3.13
        again = queue.enqueue(_job(1, python=13), 2.0)
        assert again.queued_at == first.queued_at == 1.0
        queue.enqueue(_job(2), 3.0)
        queue.enqueue(_job(3), 4.0)
        claimed = await asyncio.wait_for(queue.claim(OFFER), 1)
        assert claimed.project == "p2", "the oldest job the offer serves comes first"
        queue.started(claimed.key, 5.0)
        assert [(p.job.project, p.started_at) for p in queue.active()] == [
            ("p1", None), ("p2", 5.0), ("p3", None),
        ]  # fmt: skip

        waiter = asyncio.create_task(queue.wait(claimed.key))
        impatient = asyncio.create_task(queue.wait(claimed.key))
        await asyncio.sleep(0)
        impatient.cancel()  # a client that hangs up does not end the job for the others
        record = BuildRecord(claimed.key, BuildState.DONE, "p2", "1.0", "p2-1.0.tar.gz", 5.0, 6.0)
        queue.end(claimed.key, record)
        assert await asyncio.wait_for(waiter, 1) == record
        assert not queue.holds(claimed.key)

        claimer = asyncio.create_task(queue.claim(OFFER))
        assert (await asyncio.wait_for(claimer, 1)).project == "p3"
        late = asyncio.create_task(queue.claim(OFFER))
        await asyncio.sleep(0.01)
        assert not late.done(), "a claim waits while nothing it serves is queued"
        queue.enqueue(_job(4), 7.0)
        assert (await asyncio.wait_for(late, 1)).project == "p4"

    asyncio.run(main())
