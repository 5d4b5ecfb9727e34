"""A built wheel's reproducibility verdict: a second, independent build of the same job compared byte for
byte with the wheel served (builder/reproduce.py), then recorded in the build's record and signed into its
statement again (proxy/provenance/statement.py). The embedded pool and the cluster judge the same way; only
who made the second build differs (the same host in a fresh folder, or another builder of the cluster).
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import orjson
import structlog

from builder.jobs import BuildJob, BuildRecord, BuildState, Phase
from builder.protocol import WorkerReport
from builder.reproduce import Verdict, compare_wheels
from builder.tags import InvalidTarget, Target
from proxy.builds.records import attach_attestation
from proxy.provenance.attest import Attestor
from proxy.storage.blobs import BlobStore

log = structlog.get_logger(__name__)


def awaits_verdict(record: BuildRecord) -> bool:
    """A served wheel whose second build has not been judged yet."""
    return record.state is BuildState.DONE and record.reproduced is None and bool(record.wheel_sha256)


async def facts_of(blobs: BlobStore, record: BuildRecord) -> dict[str, Any] | None:
    """The worker's provenance facts the record's statement was made from (None: none kept)."""
    raw = await blobs.read(record.provenance_sha256) if record.provenance_sha256 else None
    if raw is None:
        return None
    facts = orjson.loads(raw)
    return facts if isinstance(facts, dict) else None


def job_of(record: BuildRecord, facts: Mapping[str, Any]) -> BuildJob | None:
    """The job that built ``record`` again (for a second build after a restart): the record names all of it
    but the sdist's URL, which its provenance facts hold. None: the facts do not say."""
    sdist = facts.get("sdist")
    url = sdist.get("url") if isinstance(sdist, dict) else None
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        return None
    try:
        target = Target.parse(record.key.target)
    except InvalidTarget:
        return None
    return BuildJob(
        record.project, record.version, record.sdist_filename, record.key.sdist_sha256, url, target
    )


MAX_NOTE = 500  # characters of a second build's error kept in a verdict's note (it is signed and served)
_HOSTS_TROUBLE = frozenset({Phase.FETCH.value, Phase.INTERNAL.value})


def judges(report: WorkerReport, *, remote: bool) -> bool:
    """Whether a second build's ``report`` makes a verdict. A wheel always does; a failure only when it is
    the package's and was seen here: a remote builder's failure is its word only (it would make a signed
    "not reproduced" of anything), and a failure to fetch the sdist or of the host says nothing of the
    package. Those go to another try instead."""
    if report.ok:
        return True
    return not remote and report.phase not in _HOSTS_TROUBLE


async def verdict_on(
    blobs: BlobStore, record: BuildRecord, report: WorkerReport, second: Path | None
) -> Verdict | None:
    """How the second build (``report``, its wheel at ``second``) compares with ``record``'s wheel. None: the
    served wheel is gone (forgotten meanwhile): nothing to judge."""
    first = await blobs.get(record.wheel_sha256)
    if first is None or first.path is None:
        return None
    if not report.ok or second is None:
        return Verdict(False, note=f"the second build failed in {report.phase}: {report.error}"[:MAX_NOTE])
    if report.wheel_filename != record.wheel_filename:
        return Verdict(False, note=f"the second build made {report.wheel_filename}"[:MAX_NOTE])
    return await asyncio.to_thread(compare_wheels, first.path, second)


async def judged(
    blobs: BlobStore, record: BuildRecord, verdict: Verdict, by: str, attestor: Attestor | None
) -> BuildRecord:
    """``record`` with ``verdict`` on it (the second build made by ``by``), its statement signed again."""
    result = dataclasses.replace(
        record,
        reproduced=verdict.reproduced,
        differing=verdict.differing,
        reproduction_note=verdict.note,
        reproduced_by=by,
    )
    facts = await facts_of(blobs, record)
    if attestor is not None and facts is not None:
        result = await attach_attestation(blobs, result, facts, attestor)
    log.info(
        "build_reproducibility", project=record.project, version=record.version, target=record.key.target,
        reproduced=verdict.reproduced, by=by, differing=list(verdict.differing[:10]),
        note=verdict.note or None,
    )  # fmt: skip
    return result


# What a verdict changes in a record: the verdict, and the statement signed again with it. Only these are
# written back, onto the record as it is then: a change made meanwhile (an orphan mark) must not be undone.
VERDICT_FIELDS = (
    "reproduced", "differing", "reproduction_note", "reproduced_by", "attestation_sha256", "pep740_sha256",
)  # fmt: skip


def with_verdict(current: BuildRecord, judged: BuildRecord) -> BuildRecord:
    """``current`` with the verdict and the new signature of ``judged`` (a record of the same wheel)."""
    return dataclasses.replace(current, **{name: getattr(judged, name) for name in VERDICT_FIELDS})


def verdict_json(judged: BuildRecord) -> dict[str, Any]:
    """The record's verdict fields as its JSON has them (to merge into a stored record)."""
    record = orjson.loads(judged.to_json())
    return {name: record[name] for name in VERDICT_FIELDS}
