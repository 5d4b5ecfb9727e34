"""What every build service does with a build that ended, wherever it ran: fetch its sdist within a time
limit, turn the worker's report into a record, and judge a failure final, or the verdict that a project
needs a toolchain this builder lacks. The embedded pool, the cluster's own builder and the cluster's remote
builders all go through these, so a record means the same whoever made it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Iterable
from pathlib import Path

import structlog

from builder.host import BUILDER_VERSION
from builder.jobs import BuildJob, BuildRecord, BuildState, Phase
from builder.protocol import WorkerReport

log = structlog.get_logger(__name__)
_PHASES = {phase.value for phase in Phase}


def finished_record(
    job: BuildJob,
    report: WorkerReport,
    *,
    queued_at: float | None = None,
    builder: str = BUILDER_VERSION,
    made_by: str = "",
) -> BuildRecord:
    """The record of ``job`` as ``report`` says it ended, now; artifacts are named once stored.
    ``queued_at``: when the job was queued (None: unknown, no queue time). A phase the report names that
    is not ours (a remote builder's report is untrusted) is the host's trouble: internal."""
    finished = time.time()
    started = finished - report.build_seconds
    phase = Phase(report.phase) if report.phase in _PHASES else (None if report.ok else Phase.INTERNAL)
    return BuildRecord(
        key=job.key,
        state=BuildState.DONE if report.ok else BuildState.FAILED,
        project=job.project,
        version=job.version,
        sdist_filename=job.sdist_filename,
        started_at=started,
        finished_at=finished,
        queued_seconds=max(0.0, started - queued_at) if queued_at is not None else 0.0,
        wheel_filename=report.wheel_filename if report.ok else "",
        error=report.error,
        phase=phase,
        builder=builder,
        made_by=made_by,
    )


def is_final(record: BuildRecord) -> bool:
    """A failure is final only when the package caused it with this builder: one an older builder made, an
    unconfirmed remote one, or the host's own (phase internal), may be tried again."""
    if record.state is not BuildState.FAILED:
        return True
    return record.builder == BUILDER_VERSION and record.phase is not Phase.INTERNAL


def lacking_toolchain(record: BuildRecord) -> str | None:
    """Why ``record``'s project cannot be built here at all (it needs a toolchain this builder lacks), as
    this builder found it; None when the record says nothing of the kind."""
    if record.phase is Phase.TOOLCHAIN and record.builder == BUILDER_VERSION:
        return f"an earlier build of {record.project} needed a toolchain this builder lacks: {record.error}"
    return None


async def fetch_within(
    fetch_sdist: Callable[[BuildJob], Awaitable[Path]], job: BuildJob, seconds: float
) -> Path | WorkerReport:
    """The verified sdist of ``job``, or the failure to get it within ``seconds``."""
    try:
        return await asyncio.wait_for(fetch_sdist(job), seconds)
    except TimeoutError:
        return WorkerReport.failure(Phase.FETCH, f"the sdist did not arrive within {seconds:.0f} s")
    except Exception as exc:  # any fetch failure is this build's failure, named
        return WorkerReport.failure(Phase.FETCH, f"cannot fetch the sdist: {exc}")


def announce(
    record: BuildRecord, listeners: Iterable[Callable[[BuildRecord], None]], **fields: object
) -> None:
    """Tell the listeners (the metrics) that a build ended, and log it, wherever the build ran."""
    for listener in listeners:
        listener(record)
    log.info(
        "build_finished",
        project=record.project,
        version=record.version,
        target=record.key.target,
        state=record.state.value,
        seconds=round(record.duration, 2),
        queued_seconds=round(record.queued_seconds, 2),
        phase=record.phase.value if record.phase else None,
        error=record.error or None,
        **fields,
    )
