"""The farm's side of remote builders (``wheelfarm builder run --farm URL``, over proxy/cluster/farmapi.py):
who a token belongs to, a job for a builder's offer (a long poll), its lease, and the check of what it
uploads before the build is recorded. A builder is trusted with nothing: its wheel is inspected as a local
build's, and one that is not what the job asked for is refused, the job goes back to the queue and the
builder is flagged (no more jobs until an operator unflags it).
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
from collections import OrderedDict
from pathlib import Path
from typing import NoReturn

import orjson
import structlog

from builder.host import BUILDER_VERSION
from builder.jobs import BuildJob, BuildKey, BuildRecord, Limits, TargetOffer, public_url
from builder.protocol import WorkerReport
from builder.wheelcheck import BadWheel, Inspection, inspect_wheel
from proxy.builds.finished import finished_record
from proxy.builds.records import attach_attestation
from proxy.cluster.notices import IDLE_POLL_SECONDS, Notices
from proxy.cluster.records import ClusterRecords

log = structlog.get_logger(__name__)

TOKEN_CACHE_SECONDS = 10.0
TOKENS_REMEMBERED = 1024
TOKEN_FORMAT = re.compile(
    r"wfb_[A-Za-z0-9_-]{43}"
)  # what add_token makes: "wfb_" + 32 random bytes, base64url
MAX_HELD_BY_A_BUILDER = 16
REMOTE_FAILURE = "remote, unconfirmed"  # a failure's builder version that is never final (finished.is_final)


class RemoteBuilders:
    def __init__(
        self, records: ClusterRecords, notices: Notices, lease_seconds: float, limits: Limits
    ) -> None:
        self._records = records
        self._queue = records.queue
        self._notices = notices
        self.lease_seconds = lease_seconds
        self.limits = limits  # what an uploaded wheel is inspected against
        self._stopping = asyncio.Event()  # the server shuts down: long polls end at once
        self._tokens: OrderedDict[str, tuple[str | None, float]] = OrderedDict()  # token -> (builder, when)

    def stop_long_polls(self) -> None:
        """The server is shutting down: remote builders' claims answer now rather than hold it up."""
        self._stopping.set()

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
        """A job for ``builder``, waiting up to ``poll_seconds`` for one (a long poll); the announcement of
        its offer doubles as its heartbeat."""
        deadline = time.monotonic() + poll_seconds
        await self._queue.announce(builder, offer)
        while True:
            new_job = self._notices.new_job()
            flagged = await self._queue.flagged(builder)
            if flagged is not None:
                raise BuilderFlagged(builder, flagged)
            job = None
            if await self._queue.held_by(builder) < MAX_HELD_BY_A_BUILDER:  # one token cannot take the queue
                job = await self._queue.claim(offer, builder, self.lease_seconds, time.time())
            if job is None:  # a quiet moment for it: a wheel's second build
                job = await self._records.claim_second(offer, builder, self.lease_seconds)
            remaining = deadline - time.monotonic()
            if job is not None or remaining <= 0:
                return job
            if self._stopping.is_set():
                return None
            stopping = asyncio.ensure_future(self._stopping.wait())
            woken = asyncio.ensure_future(new_job.wait())
            await asyncio.wait([stopping, woken], timeout=min(remaining, IDLE_POLL_SECONDS),
                               return_when=asyncio.FIRST_COMPLETED)  # fmt: skip
            stopping.cancel()
            woken.cancel()

    async def holds(self, builder: str, key: BuildKey) -> bool:
        if await self._queue.holds(key, builder) is not None:
            return True
        return await self._records.seconds.holds(key, builder) is not None

    async def renew_for(self, builder: str, key: BuildKey) -> bool:
        """A lease renewed for as long as a local build may run (each sandboxed step's time limit, ten times
        over, as the local host bounds its worker): past that the job goes to another builder."""
        longest = self.limits.timeout_seconds * 10 + 120
        if await self._queue.flagged(builder) is not None:
            return False
        if await self._queue.renew(key, builder, self.lease_seconds, time.time() - longest):
            return True
        return await self._records.seconds.renew(key, builder, self.lease_seconds, time.time() - longest)

    async def accept(
        self, builder: str, key: BuildKey, report: WorkerReport, wheel: Path | None, log_file: Path | None
    ) -> BuildRecord:
        """Verify and record what ``builder`` built for ``key``. A wheel that is not what the job asked for
        (another project or version, tags the target cannot install, a broken archive) is refused."""
        job = await self._queue.holds(key, builder)
        second = None if job is not None else await self._records.seconds.holds(key, builder)
        if job is None and second is None:
            raise NotHeld(
                f"{builder} does not hold the build of {key} (its lease expired, or it never had it)"
            )
        if await self._queue.flagged(builder) is not None:
            raise NotHeld(f"{builder} is flagged: its uploads are not taken")
        if second is not None:
            inspection = await self._inspect(builder, second[0], report, wheel, second=True)
            judged = await self._records.judge(
                key, builder, report, wheel if inspection else None, remote=True
            )
            if judged is None:
                raise NotHeld(
                    f"the second build of {key} was not judged (a failure is a remote builder's word only, "
                    "and goes to another try), or the build was forgotten, built anew or judged meanwhile"
                )
            return judged
        assert job is not None
        inspection = await self._inspect(builder, job, report, wheel, second=False)
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
        blobs = self._records.blobs
        # The sdist is the job's, whatever the builder says: verify --rebuild and readers of the statement
        # must not be sent to a URL a builder chose.
        sdist = {"filename": job.sdist_filename, "url": public_url(job.sdist_url), "sha256": job.sdist_sha256}
        facts = {**report.provenance, "builder": builder, "sdist": sdist}

        async def store() -> BuildRecord:
            stored = record
            if inspection is not None and wheel is not None:
                stored_wheel = await blobs.put(wheel)
                metadata = await blobs.put(inspection.metadata)  # read from the wheel itself
                provenance = await blobs.put(orjson.dumps(facts, option=orjson.OPT_INDENT_2))
                stored = dataclasses.replace(
                    stored, wheel_sha256=stored_wheel.sha256, wheel_size=stored_wheel.blob.size,
                    metadata_sha256=metadata.sha256, provenance_sha256=provenance.sha256,
                )  # fmt: skip
            if log_file is not None:
                log_blob = await blobs.put(log_file)
            else:
                log_blob = await blobs.put(f"build failed in {report.phase}: {report.error}\n".encode())
            stored = dataclasses.replace(stored, log_sha256=log_blob.sha256)
            attestor = self._records.attestor
            if inspection is not None and attestor is not None:
                # The farm signs what it checked (the wheel) and who reported the rest (made_by).
                stored = await attach_attestation(blobs, stored, facts, attestor)
            return stored

        recorded = await self._records.record(store, builder)
        if recorded is None:
            raise NotHeld(f"{builder} lost the build of {key} while it uploaded")
        return recorded

    async def _inspect(
        self, builder: str, job: BuildJob, report: WorkerReport, wheel: Path | None, *, second: bool
    ) -> Inspection | None:
        """The uploaded wheel inspected as a local build's (None: the report is a failure, with no wheel);
        one that is not what the job asked for is refused, its builder flagged. A second build's wheel is
        held to the same rules: it is compared with the served one only once it is a wheel of the job."""
        if not report.ok:
            return None
        if wheel is None:
            await self._refuse(builder, job.key, "the report says the build succeeded, but no wheel was sent",
                               second=second)  # fmt: skip
        assert wheel is not None
        if not _wheel_named(report.wheel_filename, wheel):
            await self._refuse(
                builder,
                job.key,
                f"the report names {report.wheel_filename!r}, not the wheel sent",
                second=second,
            )
        try:
            return await asyncio.to_thread(
                inspect_wheel, wheel, project=job.project, version=job.version, target=job.target,
                limits=self.limits,
            )  # fmt: skip
        except BadWheel as exc:
            await self._refuse(builder, job.key, f"the uploaded wheel was refused: {exc}", second=second)

    async def _refuse(self, builder: str, key: BuildKey, reason: str, *, second: bool) -> NoReturn:
        log.warning("builder_upload_refused", builder=builder, key=str(key), reason=reason, second=second)
        await self._queue.flag(builder, reason)
        if second:
            await self._records.seconds.release(key, builder)
        else:
            await self._queue.release(key, builder, time.time())
        raise UploadRefused(reason)


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
