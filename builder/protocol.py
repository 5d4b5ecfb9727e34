"""What the builder pool and one build's worker process say to each other (stdin, stdout), as JSON.

The order carries a job plus how to run it here (interpreter, index, work folder, limits, user); the report
is the outcome, which the pool turns into a BuildRecord (builder/jobs.py).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import orjson

from builder.jobs import BuildKey, Limits, Phase


@dataclass(frozen=True, slots=True)
class WorkerOrder:
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
    limits: Limits = dataclasses.field(default_factory=Limits)
    build_user: tuple[int, int] | None = None  # (uid, gid) the sandbox runs as when we are root
    bwrap: str = ""  # the bubblewrap binary ("": found on the usual paths)
    # PEP 508 pins the build requirements must resolve within (uv's --constraint): a rebuild gets the
    # versions a signed statement lists. Empty for the farm's own builds; an order without it still reads.
    constraints: tuple[str, ...] = ()

    @property
    def key(self) -> BuildKey:
        return BuildKey(self.sdist_sha256, self.target)

    def to_json(self) -> bytes:
        return orjson.dumps(dataclasses.asdict(self))

    @classmethod
    def from_json(cls, data: bytes) -> WorkerOrder:
        raw: dict[str, Any] = orjson.loads(data)
        raw["limits"] = Limits(**raw["limits"])
        if raw.get("build_user") is not None:
            uid, gid = raw["build_user"]
            raw["build_user"] = (int(uid), int(gid))
        raw["constraints"] = tuple(str(each) for each in raw.get("constraints", ()))
        return cls(**raw)


@dataclass(frozen=True, slots=True)
class WorkerReport:
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
    def from_json(cls, data: bytes) -> WorkerReport:
        return cls(**orjson.loads(data))

    @classmethod
    def failure(cls, phase: Phase, error: str, build_seconds: float = 0.0) -> WorkerReport:
        return cls(ok=False, phase=phase.value, error=error, build_seconds=build_seconds)
