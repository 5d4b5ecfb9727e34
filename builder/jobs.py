"""The build vocabulary, in one place: a build's key, the job that asks for it, its progress while it runs,
the record of how it ended, its state and the phase a failure happened in, and the limits it runs under.

Jobs and records cross process boundaries (the worker, a database, a remote builder) as JSON.
"""

from __future__ import annotations

import dataclasses
import enum
import fnmatch
import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from builder.tags import Target


class BuildState(enum.Enum):
    QUEUED = "queued"  # asked for, waiting for a free builder
    RUNNING = "running"
    DONE = "done"  # a wheel was built, checked and kept
    FAILED = "failed"  # see the record's phase and error

    @property
    def finished(self) -> bool:
        return self in (BuildState.DONE, BuildState.FAILED)


class Phase(enum.Enum):
    """Where a build failed; named in its record, its log and the 422 a client gets."""

    FETCH = "fetch"  # copying and verifying the sdist
    EXTRACT = "extract"  # unpacking it (in the sandbox) and reading pyproject.toml
    TOOLCHAIN = "toolchain"  # it needs a compiler this builder lacks: the whole project is not offered
    ENVIRONMENT = "environment"  # resolving, downloading and installing the build requirements
    REQUIRES = "requires"  # the backend's get_requires_for_build_wheel
    BUILD = "build"  # the backend's build_wheel
    REPAIR = "repair"  # auditwheel
    INSPECT = "inspect"  # the wheel's structure, names, sizes, RECORD and tags
    IMPORT = "import"  # importing the wheel with the target's interpreter
    INTERNAL = "internal"  # our bug or the host's trouble, never the package's


def public_url(url: str) -> str:
    """``url`` without userinfo (RFC 3986 section 3.2.1): what provenance records and logs may show."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit(parts._replace(netloc=parts.netloc.rsplit("@", 1)[1]))


_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_TARGET_ID = re.compile(r"[a-z0-9]+-[a-z0-9_]+")  # <interpreter>-<platform>, as Target.id spells it


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes, read in chunks (hex, as wheelfarm names things)."""
    with path.open("rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def is_sha256(text: str) -> bool:
    """A sha256 as wheelfarm names things by it: 64 lower-case hex digits, nothing else (no newline)."""
    return _SHA256_HEX.fullmatch(text) is not None


class InvalidBuildKey(ValueError):
    pass


@dataclass(frozen=True, slots=True)
class BuildKey:
    """One build per (sdist sha256, target): the same sdist for the same target always builds the same."""

    sdist_sha256: str
    target: str

    @classmethod
    def checked(cls, sdist_sha256: str, target: str) -> BuildKey:
        """A key from untrusted text (a URL, a file name): both parts end up in paths and URLs."""
        if not is_sha256(sdist_sha256) or _TARGET_ID.fullmatch(target) is None:
            raise InvalidBuildKey(f"not a build key: {sdist_sha256[:80]!r}/{target[:80]!r}")
        return cls(sdist_sha256, target)

    def __str__(self) -> str:
        return f"{self.sdist_sha256}/{self.target}"


@dataclass(frozen=True, slots=True)
class Limits:
    timeout_seconds: float = 900.0  # per sandboxed step
    memory_bytes: int = 4 << 30  # address space of each process
    processes: int = 512
    file_size_bytes: int = 1 << 30  # largest single file the build may write
    output_bytes: int = 4 << 30  # all it holds on disk together (and the largest wheel)
    metadata_bytes: int = 8 << 20  # the wheel's METADATA, served as its PEP 658 .metadata
    wheel_members: int = 100_000
    log_bytes: int = 16 << 20  # output kept in the build log
    files: int = 500_000  # files and folders the build may hold (each costs an inode)
    min_free_bytes: int = 1 << 30  # builds stop when the work folder's disk has less free space


@dataclass(frozen=True, slots=True)
class BuildJob:
    """What the farm is asked for: build this sdist (named by its sha256, verified when fetched) for this
    target."""

    project: str
    version: str
    sdist_filename: str
    sdist_sha256: str
    sdist_url: str
    target: Target

    @property
    def key(self) -> BuildKey:
        return BuildKey(self.sdist_sha256, self.target.id)

    def to_json(self) -> bytes:
        return orjson.dumps({**dataclasses.asdict(self), "target": self.target.id})

    @classmethod
    def from_json(cls, raw: bytes) -> BuildJob:
        data: dict[str, Any] = orjson.loads(raw)
        return cls(**{**data, "target": Target.parse(data["target"])})


@dataclass(frozen=True, slots=True)
class BuildProgress:
    """A build not finished yet: queued (waiting for a builder) or running, and since when."""

    job: BuildJob
    queued_at: float
    started_at: float | None = None

    @property
    def state(self) -> BuildState:
        return BuildState.QUEUED if self.started_at is None else BuildState.RUNNING


@dataclass(frozen=True, slots=True)
class BuildRecord:
    """How a build ended. A done build names its wheel and the sha256 of each artifact it left (the wheel,
    its METADATA, the log, the provenance), by which the artifact store holds them; a failed one its phase
    and error, and its log."""

    key: BuildKey
    state: BuildState  # DONE or FAILED
    project: str
    version: str
    sdist_filename: str
    started_at: float  # when the build itself started (after waiting in the queue)
    finished_at: float
    queued_seconds: float = 0.0
    wheel_filename: str = ""
    wheel_sha256: str = ""
    wheel_size: int = 0
    metadata_sha256: str = ""
    log_sha256: str = ""
    provenance_sha256: str = ""
    attestation_sha256: str = ""  # the DSSE envelope of the signed in-toto statement (proxy/provenance)
    pep740_sha256: str = ""  # the PEP 740 provenance object wrapping that attestation
    error: str = ""
    phase: Phase | None = None
    builder: str = ""  # the builder's version: a failure is not final for a newer builder
    orphaned_since: float | None = None  # when upstream stopped listing the sdist (None: it still does)
    made_by: str = ""  # in a cluster, the builder that made it (a host:pid, or a remote builder's name)
    # A second, independent build of the job: did it make the same bytes? (None: not checked yet.) When not,
    # the files of the wheel that differ, and a note (why the second build failed, or what else differs).
    reproduced: bool | None = None
    differing: tuple[str, ...] = ()
    reproduction_note: str = ""
    reproduced_by: str = ""  # the builder that made the second build (a cluster's, or "farm": this host)

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at

    def to_json(self) -> bytes:
        data = dataclasses.asdict(self)
        data["key"] = {"sdist_sha256": self.key.sdist_sha256, "target": self.key.target}
        data["state"] = self.state.value
        data["phase"] = self.phase.value if self.phase is not None else None
        return orjson.dumps(data, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, raw: bytes) -> BuildRecord:
        data: dict[str, Any] = orjson.loads(raw)
        data["key"] = BuildKey(**data["key"])
        data["state"] = BuildState(data["state"])
        data["phase"] = Phase(data["phase"]) if data.get("phase") else None
        data["differing"] = tuple(data.get("differing") or ())
        return cls(**data)


MIN_PYTHON = (3, 8)  # the oldest target the in-sandbox tools (frontend, import check, uv) run on


@dataclass(frozen=True, slots=True)
class TargetOffer:
    """What one builder can build: CPython ``pythons`` (minor versions of 3) on one platform family
    ("manylinux": glibc, "musllinux") and architecture, for targets matching ``patterns`` (fnmatch, the
    operator's ``[builder] targets``). A target of a newer libc than the builder's is served too: the wheel
    it builds names the older libc it needs, which the newer one runs."""

    family: str
    arch: str
    pythons: tuple[int, ...]
    patterns: tuple[str, ...] = ("*",)

    def serves(self, target: Target) -> bool:
        if target.python < MIN_PYTHON or target.python[0] != 3 or target.python[1] not in self.pythons:
            return False
        platform = target.platform
        if not platform.startswith(self.family + "_") or not platform.endswith("_" + self.arch):
            return False  # another architecture or libc: we could not build a wheel that runs there
        return any(fnmatch.fnmatchcase(target.id, pattern) for pattern in self.patterns)

    def targets_like(self, target: Target) -> tuple[Target, ...]:
        """The targets served on ``target``'s platform, one per Python version."""
        candidates = (Target((3, minor), target.platform) for minor in sorted(self.pythons))
        return tuple(each for each in candidates if self.serves(each))


class Artifact(enum.Enum):
    """What a build leaves: the wheel, its METADATA (PEP 658), its log, the worker's provenance facts, and
    what the farm signed: the attestation (a DSSE envelope) and the PEP 740 provenance object wrapping it."""

    WHEEL = "wheel"
    METADATA = "metadata"
    LOG = "log"
    PROVENANCE = "provenance"
    ATTESTATION = "attestation"
    PEP740 = "pep740"


def artifact_sha256(record: BuildRecord, artifact: Artifact) -> str:
    return {
        Artifact.WHEEL: record.wheel_sha256,
        Artifact.METADATA: record.metadata_sha256,
        Artifact.LOG: record.log_sha256,
        Artifact.PROVENANCE: record.provenance_sha256,
        Artifact.ATTESTATION: record.attestation_sha256,
        Artifact.PEP740: record.pep740_sha256,
    }[artifact]


def artifact_filename(record: BuildRecord, artifact: Artifact) -> str:
    return {
        Artifact.WHEEL: record.wheel_filename,
        Artifact.METADATA: record.wheel_filename + ".metadata",
        Artifact.LOG: "build.log",
        Artifact.PROVENANCE: "provenance.json",
        Artifact.ATTESTATION: record.wheel_filename + ".dsse.json",
        Artifact.PEP740: record.wheel_filename + ".provenance",
    }[artifact]
