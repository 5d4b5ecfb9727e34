"""What a build is asked to do and what it gives back; both cross a process boundary as JSON."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson


class BuildState(enum.Enum):
    DONE = "done"
    FAILED = "failed"


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


@dataclass(frozen=True, slots=True)
class BuildKey:
    """One build per (sdist sha256, target): the same sdist for the same target always builds the same."""

    sdist_sha256: str
    target: str

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
class BuildRequest:
    project: str
    version: str
    sdist_filename: str
    sdist_sha256: str
    sdist_url: str  # where upstream has it, without credentials (for provenance)
    sdist_path: str  # the verified copy in the proxy's file store; copied into the work folder
    target: str
    interpreter: str  # path of the CPython that builds for the target
    index_url: str  # the proxy's plain (no overlay) simple API, for build requirements
    work_dir: str  # this build's own folder (builder/workdir.py), made by the pool
    limits: Limits = Limits()
    sandbox: bool = True
    build_user: tuple[int, int] | None = None  # (uid, gid) the sandbox runs as when we are root
    bwrap: str = ""  # the bubblewrap binary ("": found on the usual paths)

    @property
    def key(self) -> BuildKey:
        return BuildKey(self.sdist_sha256, self.target)

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> BuildRequest:
        raw: dict[str, Any] = orjson.loads(data)
        raw["limits"] = Limits(**raw["limits"])
        if raw.get("build_user") is not None:
            uid, gid = raw["build_user"]
            raw["build_user"] = (int(uid), int(gid))
        return cls(**raw)


@dataclass(frozen=True, slots=True)
class BuildResult:
    """``ok`` with the wheel's facts, or not ok with a one-line ``error`` and ``phase``. The wheel and its
    METADATA are in the work folder's result/ (named by ``wheel_filename``), the log in its build.log."""

    ok: bool
    error: str = ""
    phase: str = ""
    wheel_filename: str = ""
    wheel_sha256: str = ""
    wheel_size: int = 0
    build_seconds: float = 0.0  # the build itself, without the time it waited in the queue
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> BuildResult:
        return cls(**orjson.loads(data))

    @classmethod
    def failure(cls, phase: Phase, error: str, build_seconds: float = 0.0) -> BuildResult:
        return cls(ok=False, phase=phase.value, error=error, build_seconds=build_seconds)
