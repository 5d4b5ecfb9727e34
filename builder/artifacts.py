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
from pathlib import Path

import orjson

from builder.jobs import BuildKey, BuildRecord, BuildState, Phase
from builder.protocol import WorkerReport
from builder.workdir import BuildFolder


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

    def keep(
        self,
        key: BuildKey,
        result: WorkerReport,
        folder: BuildFolder | None,
        *,
        project: str,
        version: str,
        sdist: str,
        queued: float,
        builder: str,
    ) -> BuildRecord:
        """Copy a build's log, wheel and metadata out of its work folder (the worker's own files, never
        the build's tree) into the store, and index the record."""
        target = self.folder(key)
        staging = target.with_name(f".{key.target}.{os.getpid()}.{time.monotonic_ns()}")
        staging.mkdir(parents=True)
        log = folder.log if folder is not None else None
        if log is not None and log.is_file() and not log.is_symlink():
            shutil.copyfile(log, staging / "build.log")
        else:
            (staging / "build.log").write_text(f"build failed in {result.phase}: {result.error}\n")
        metadata_sha = ""
        if result.ok and folder is not None:
            wheel = folder.result / result.wheel_filename
            shutil.copyfile(wheel, staging / result.wheel_filename)
            metadata = wheel.with_name(wheel.name + ".metadata").read_bytes()
            (staging / (result.wheel_filename + ".metadata")).write_bytes(metadata)
            provenance = orjson.dumps(result.provenance, option=orjson.OPT_INDENT_2)
            (staging / "provenance.json").write_bytes(provenance)
            metadata_sha = hashlib.sha256(metadata).hexdigest()
        finished = time.time()
        record = BuildRecord(
            key=key,
            state=BuildState.DONE if result.ok else BuildState.FAILED,
            project=project,
            version=version,
            sdist_filename=sdist,
            started_at=finished - result.build_seconds,
            finished_at=finished,
            queued_seconds=max(0.0, finished - result.build_seconds - queued),
            wheel_filename=result.wheel_filename,
            wheel_sha256=result.wheel_sha256,
            wheel_size=result.wheel_size,
            metadata_sha256=metadata_sha,
            error=result.error,
            phase=Phase(result.phase) if result.phase else None,
            builder=builder,
        )
        (staging / "record.json").write_bytes(record.to_json())
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
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
