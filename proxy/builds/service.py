"""The build service: everything the web layer may ask of builds, wherever they run.

The embedded pool (proxy/builds/embedded.py: builds in worker processes on this host) is the first
implementation; a cluster of proxies sharing a database and remote builders is another. Everything that may
cross a network is async. What a page render needs is handed out as two immutable snapshots it can consult
without waiting: ``Capabilities`` (which targets are served now) and ``ProjectBuilds`` (one project's
finished builds, with a version that changes whenever they change, for render caches).

Artifacts (wheel, METADATA, log, provenance) are content-addressed: a record names each by its sha256, so
a URL naming that sha256 serves the same bytes forever, and a rebuild gets new URLs.
"""

from __future__ import annotations

import enum
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from builder.jobs import Artifact, BuildJob, BuildKey, BuildProgress, BuildRecord, BuildState, TargetOffer
from builder.tags import Target
from proxy.storage.blobs import Blob


class ServiceState(enum.Enum):
    CHECKING = "checking"  # the start-up self-check runs: no build links yet
    READY = "ready"
    UNAVAILABLE = "unavailable"  # builds are off here; the status's reason says why
    OFF = "off"  # the operator turned builds off ([builder] enabled = false)


@dataclass(frozen=True, slots=True)
class ServiceStatus:
    state: ServiceState
    reason: str = ""

    def view(self) -> dict[str, str]:
        """For /healthz and the admin summary."""
        return {"state": self.state.value, **({"reason": self.reason} if self.reason else {})}


@dataclass(frozen=True, slots=True)
class Capabilities:
    """Which targets some builder serves now (none unless the service is ready)."""

    status: ServiceStatus
    offers: tuple[TargetOffer, ...] = ()

    def serves(self, target: Target) -> bool:
        return self.status.state is ServiceState.READY and any(o.serves(target) for o in self.offers)

    def targets_like(self, target: Target) -> tuple[Target, ...]:
        """Every served target on ``target``'s platform (one per Python version), for locking clients."""
        if self.status.state is not ServiceState.READY:
            return ()
        found: dict[str, Target] = {}
        for offer in self.offers:
            for each in offer.targets_like(target):
                found.setdefault(each.id, each)
        return tuple(sorted(found.values(), key=lambda t: t.python))


@dataclass(frozen=True, slots=True)
class ProjectBuilds:
    """One project's finished builds as the service holds them now: the final ones (done, or failed in a
    way a retry would not change), whether the project may be built at all, and a version that changes
    whenever any of this changes."""

    project: str
    version: int
    allowed: bool
    records: Mapping[BuildKey, BuildRecord] = field(default_factory=dict)
    not_allowed_because: str = ""

    def record(self, key: BuildKey) -> BuildRecord | None:
        return self.records.get(key)


@dataclass(frozen=True, slots=True)
class BuildCounts:
    queued: int = 0
    running: int = 0
    done: int = 0
    failed: int = 0
    orphaned: int = 0
    built_bytes: int = 0  # the wheels kept
    reproduced: int = 0  # done builds a second build made byte for byte the same
    not_reproduced: int = 0  # done builds whose second build differed (or failed)


FinishedListener = Callable[[BuildRecord], None]


@dataclass(frozen=True, slots=True)
class BuilderView:
    """One builder as the admin sees it: what it builds, when it was last heard from, what it holds."""

    id: str
    offer: TargetOffer | None
    live: bool
    last_seen: float | None = None  # epoch seconds (None: this process's own builder, always current)
    flagged: str = ""  # why the farm refused its upload and gives it no more jobs
    jobs: tuple[str, ...] = ()  # "project for target" of each build it holds


class BuildService(Protocol):
    async def capabilities(self) -> Capabilities: ...

    async def wait_ready(self) -> ServiceStatus:
        """The status once the start-up check is over (bound the wait with asyncio.timeout)."""
        ...

    async def project(self, project: str) -> ProjectBuilds: ...

    async def submit(self, job: BuildJob) -> BuildProgress | BuildRecord:
        """Start the build of ``job``, or join the one running for its key; its record if it is final.
        Raises NotOffered when no builder serves the target or the policy does not allow the project."""
        ...

    async def wait(self, key: BuildKey) -> BuildRecord | None:
        """The record of ``key`` once its build has finished (bound the wait with asyncio.timeout); None
        when no build of it is running or recorded."""
        ...

    async def record(self, key: BuildKey, *, final: bool = True) -> BuildRecord | None:
        """The record of ``key``. With ``final``, only one a retry would not change: a failure an older
        builder or the host itself caused does not count (the next request builds again)."""
        ...

    async def records(self, project: str | None = None) -> Sequence[BuildRecord]:
        """Every finished build (of ``project``), final or not, sorted by project, version, target."""
        ...

    async def by_wheel(self, sha256: str, *, metadata: bool = False) -> BuildRecord | None:
        """The done build whose wheel (``metadata``: whose wheel's METADATA) has ``sha256``: ``wheelfarm
        verify`` asks by a wheel file's digest, or by an installed distribution's METADATA."""
        ...

    async def active(self) -> Sequence[BuildProgress]:
        """Builds queued or running, the oldest first."""
        ...

    async def counts(self) -> BuildCounts: ...

    async def builders(self) -> Sequence[BuilderView]:
        """Every builder serving this farm (in a cluster, every host's)."""
        ...

    async def artifact(self, record: BuildRecord, artifact: Artifact) -> Blob | None:
        """Where the artifact of a finished build is kept, if it still is."""
        ...

    def chunks(self, blob: Blob, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """An artifact's bytes, for stores without a local path."""
        ...

    async def forget(self, key: BuildKey) -> BuildRecord | None:
        """Delete the record and artifacts of ``key`` (its build may run again); the record deleted."""
        ...

    async def upstream_changed(self, project: str, sdists: frozenset[str]) -> None:
        """Upstream now lists these sdist sha256s for ``project``: builds of others become orphans (kept
        for the retention time, then deleted); builds of listed ones stop being orphans."""
        ...

    def on_finished(self, listener: FinishedListener) -> None:
        """Call ``listener`` with each record as its build finishes (metrics)."""
        ...

    async def close(self) -> None: ...


class NotOffered(Exception):
    """No build of this: no builder serves the target, or the policy does not allow the project."""


class NoBuilds:
    """The build service of a proxy that builds nothing ([builder] enabled = false): it serves no target,
    so pages carry no build links, and every request for a build is refused, saying why."""

    REASON = "this proxy builds no wheels ([builder] enabled = false)"

    def __init__(self) -> None:
        self._status = ServiceStatus(ServiceState.OFF, self.REASON)

    async def capabilities(self) -> Capabilities:
        return Capabilities(self._status)

    async def wait_ready(self) -> ServiceStatus:
        return self._status

    async def project(self, project: str) -> ProjectBuilds:
        return ProjectBuilds(project, 0, False, not_allowed_because=self.REASON)

    async def submit(self, job: BuildJob) -> BuildProgress | BuildRecord:
        raise NotOffered(self.REASON)

    async def wait(self, key: BuildKey) -> BuildRecord | None:
        return None

    async def record(self, key: BuildKey, *, final: bool = True) -> BuildRecord | None:
        return None

    async def records(self, project: str | None = None) -> Sequence[BuildRecord]:
        return ()

    async def by_wheel(self, sha256: str, *, metadata: bool = False) -> BuildRecord | None:
        return None

    async def active(self) -> Sequence[BuildProgress]:
        return ()

    async def counts(self) -> BuildCounts:
        return BuildCounts()

    async def builders(self) -> Sequence[BuilderView]:
        return ()

    async def artifact(self, record: BuildRecord, artifact: Artifact) -> Blob | None:
        return None

    def chunks(self, blob: Blob, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        raise FileNotFoundError(blob.key)  # no blob came from here: artifact() has none

    async def forget(self, key: BuildKey) -> BuildRecord | None:
        return None

    async def upstream_changed(self, project: str, sdists: frozenset[str]) -> None:
        return None

    def on_finished(self, listener: FinishedListener) -> None:
        return None

    async def close(self) -> None:
        return None


def is_done(record: BuildRecord | None) -> bool:
    return record is not None and record.state is BuildState.DONE
