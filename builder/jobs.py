"""What a build is asked to do and what it gives back; both cross a process boundary as JSON."""

from __future__ import annotations

import dataclasses
import enum
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson


class BuildState(enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class BuildKey:
    """One build per (sdist sha256, target): the same sdist for the same target always builds the same."""

    sdist_sha256: str
    target: str

    def __str__(self) -> str:
        return f"{self.sdist_sha256}/{self.target}"


@dataclass(frozen=True, slots=True)
class Limits:
    timeout_seconds: float = 900.0
    memory_bytes: int = 4 << 30
    processes: int = 512
    file_size_bytes: int = 1 << 30  # largest single file the build may write
    output_bytes: int = 4 << 30  # all files in the work folder together


@dataclass(frozen=True, slots=True)
class BuildRequest:
    project: str
    version: str
    sdist_filename: str
    sdist_sha256: str
    sdist_url: str  # where upstream has it (for provenance)
    sdist_path: str  # the verified copy in the proxy's file store; copied into the work folder
    target: str
    interpreter: str  # path of the CPython that builds for the target
    index_url: str  # the proxy's plain (no overlay) simple API, for build requirements
    work_root: str
    limits: Limits = Limits()
    sandbox: bool = True
    slot: int = 0  # which concurrent build this is (for per-slot resources)

    @property
    def key(self) -> BuildKey:
        return BuildKey(self.sdist_sha256, self.target)

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> BuildRequest:
        raw: dict[str, Any] = orjson.loads(data)
        raw["limits"] = Limits(**raw["limits"])
        return cls(**raw)


@dataclass(frozen=True, slots=True)
class BuildResult:
    """``ok`` with the wheel's facts, or not ok with a one-line ``error`` and ``phase``; a log either way."""

    ok: bool
    log_path: str
    error: str = ""
    phase: str = ""
    wheel_path: str = ""
    wheel_filename: str = ""
    wheel_sha256: str = ""
    wheel_size: int = 0
    metadata_path: str = ""
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self), option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, data: bytes) -> BuildResult:
        return cls(**orjson.loads(data))

    @classmethod
    def failure(cls, log_path: Path, phase: str, error: str) -> BuildResult:
        return cls(ok=False, log_path=str(log_path), phase=phase, error=error)
