"""Built wheels and failed builds on disk, one folder per build key, and their index in memory.

    <root>/<sdist sha256>/<target>/record.json       what happened (BuildRecord)
                                   build.log         the whole log, success or failure
                                   <wheel>           the wheel (done builds only)
                                   <wheel>.metadata  its METADATA (PEP 658)
                                   provenance.json   where it came from

A record is written last, by rename, so a folder without one is an interrupted build and is ignored.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from builder.jobs import BuildKey, BuildResult, BuildState


@dataclass(frozen=True, slots=True)
class BuildRecord:
    key: BuildKey
    state: BuildState  # DONE or FAILED
    project: str
    version: str
    sdist_filename: str
    started_at: float
    finished_at: float
    wheel_filename: str = ""
    wheel_sha256: str = ""
    wheel_size: int = 0
    metadata_sha256: str = ""
    error: str = ""
    phase: str = ""
    builder: str = ""  # the builder's version: a failure is not final for a newer builder
    orphaned_since: float | None = None  # when upstream stopped listing the sdist (None: it still does)

    @property
    def duration(self) -> float:
        return self.finished_at - self.started_at

    def to_json(self) -> bytes:
        data = dataclasses.asdict(self)
        data["key"] = {"sdist_sha256": self.key.sdist_sha256, "target": self.key.target}
        data["state"] = self.state.value
        return orjson.dumps(data, option=orjson.OPT_INDENT_2)

    @classmethod
    def from_json(cls, raw: bytes) -> BuildRecord:
        data: dict[str, Any] = orjson.loads(raw)
        data["key"] = BuildKey(**data["key"])
        data["state"] = BuildState(data["state"])
        return cls(**data)


class Artifacts:
    """The on-disk store; all methods block, callers run them in a thread."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self._records: dict[BuildKey, BuildRecord] = {}

    def load(self) -> None:
        for record_file in self.root.glob("*/*/record.json"):
            try:
                record = BuildRecord.from_json(record_file.read_bytes())
            except (OSError, ValueError, TypeError, KeyError):
                continue
            self._records[record.key] = record

    def get(self, key: BuildKey) -> BuildRecord | None:
        return self._records.get(key)

    def all(self) -> list[BuildRecord]:
        return sorted(self._records.values(), key=lambda r: (r.project, r.version, r.key.target))

    def folder(self, key: BuildKey) -> Path:
        return self.root / key.sdist_sha256 / key.target

    def wheel_path(self, record: BuildRecord) -> Path:
        return self.folder(record.key) / record.wheel_filename

    def keep(
        self,
        key: BuildKey,
        result: BuildResult,
        *,
        project: str,
        version: str,
        sdist: str,
        started: float,
        builder: str,
    ) -> BuildRecord:
        """Move a worker's result into the store and index it."""
        folder = self.folder(key)
        staging = folder.with_name(f".{key.target}.{os.getpid()}.{time.monotonic_ns()}")
        staging.mkdir(parents=True)
        if os.path.exists(result.log_path) and os.path.isfile(result.log_path):
            shutil.copyfile(result.log_path, staging / "build.log")
        else:
            (staging / "build.log").write_text(result.error + "\n")
        metadata_sha = ""
        if result.ok:
            shutil.copyfile(result.wheel_path, staging / result.wheel_filename)
            metadata = Path(result.metadata_path).read_bytes()
            (staging / (result.wheel_filename + ".metadata")).write_bytes(metadata)
            provenance = orjson.dumps(result.provenance, option=orjson.OPT_INDENT_2)
            (staging / "provenance.json").write_bytes(provenance)
            metadata_sha = hashlib.sha256(metadata).hexdigest()
        record = BuildRecord(
            key=key,
            state=BuildState.DONE if result.ok else BuildState.FAILED,
            project=project,
            version=version,
            sdist_filename=sdist,
            started_at=started,
            finished_at=time.time(),
            wheel_filename=result.wheel_filename,
            wheel_sha256=result.wheel_sha256,
            wheel_size=result.wheel_size,
            metadata_sha256=metadata_sha,
            error=result.error,
            phase=result.phase,
            builder=builder,
        )
        (staging / "record.json").write_bytes(record.to_json())
        if folder.exists():
            shutil.rmtree(folder)
        staging.rename(folder)
        self._records[key] = record
        return record

    def set_orphaned(self, key: BuildKey, since: float | None) -> BuildRecord | None:
        record = self._records.get(key)
        if record is None or record.orphaned_since == since:
            return record
        record = dataclasses.replace(record, orphaned_since=since)
        target = self.folder(key) / "record.json"
        partial = target.with_suffix(".partial")
        partial.write_bytes(record.to_json())
        partial.replace(target)
        self._records[key] = record
        return record

    def prune(self, max_records: int) -> list[BuildRecord]:
        """Drop records past ``max_records``: orphans first, then the oldest finished."""
        excess = len(self._records) - max_records
        if max_records <= 0 or excess <= 0:
            return []
        order = sorted(self._records.values(), key=lambda r: (r.orphaned_since is None, r.finished_at))
        dropped = order[:excess]
        for record in dropped:
            self.forget(record.key)
        return dropped

    def forget(self, key: BuildKey) -> bool:
        """Drop a record (a retry of a failed build, or deleting a built wheel)."""
        record = self._records.pop(key, None)
        shutil.rmtree(self.folder(key), ignore_errors=True)
        return record is not None
