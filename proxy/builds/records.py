"""Finished builds on this host's disk: one JSON record per build key, the artifacts in a blob store.

    <root>/records/<sdist sha256>/<target>.json   the BuildRecord, naming each artifact by its sha256
    <root>/blobs/<2 hex>/<sha256>                  wheels, METADATA, logs, provenance (content-addressed)

Artifacts are stored before their record is written (by rename), so a record never names a missing blob;
a blob no record names any more is deleted with the last record that named it. The index of records is
kept in memory, per project, so a page render or an upstream change looks at one project's builds only.
The layout of wheelfarm-builder/2 before this one (``<root>/<sdist sha256>/<target>/record.json`` next to
the files) is moved into this one when the store is loaded.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections import Counter
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import orjson
import structlog

from builder.jobs import Artifact, BuildKey, BuildRecord, artifact_sha256, is_sha256
from builder.protocol import WorkerReport
from builder.workdir import BuildFolder
from proxy.provenance.attest import Attestor
from proxy.storage.blobs import BlobStore, LocalBlobStore

log = structlog.get_logger(__name__)


class BuildRecords:
    def __init__(self, root: Path, attestor: Attestor | None = None) -> None:
        self.root = root
        self.attestor = attestor
        self.blobs = LocalBlobStore(root)
        self._folder = root / "records"
        self._records: dict[BuildKey, BuildRecord] = {}
        self._by_project: dict[str, dict[BuildKey, BuildRecord]] = {}
        self._references: Counter[str] = Counter()  # artifact sha256 -> records naming it

    def load(self) -> None:
        """Read every record (blocking: call it in a thread, once, before serving)."""
        self._folder.mkdir(parents=True, exist_ok=True)
        self.blobs.clear_partial()
        self._migrate_old_layout()
        for path in self._folder.glob("*/*.json"):
            try:
                record = BuildRecord.from_json(path.read_bytes())
            except (OSError, ValueError, TypeError, KeyError):
                log.warning("build_record_unreadable", path=str(path))
                continue
            self._index(record)

    def __len__(self) -> int:
        return len(self._records)

    def get(self, key: BuildKey) -> BuildRecord | None:
        return self._records.get(key)

    def of_project(self, project: str) -> Mapping[BuildKey, BuildRecord]:
        return self._by_project.get(project, {})

    def by_wheel(self, sha256: str, *, metadata: bool = False) -> BuildRecord | None:
        """The done build whose wheel (or its METADATA) has ``sha256``: a walk, asked once per wheel
        ``verify`` checks."""
        if self._references[sha256] == 0:
            return None
        field = "metadata_sha256" if metadata else "wheel_sha256"
        return next((r for r in self._records.values() if getattr(r, field) == sha256), None)

    def __iter__(self) -> Iterator[BuildRecord]:
        return iter(list(self._records.values()))

    async def keep(
        self, record: BuildRecord, report: WorkerReport, folder: BuildFolder | None
    ) -> BuildRecord:
        """Store a finished build's artifacts (``store_artifacts``), then its record."""
        record = await store_artifacts(self.blobs, record, report, folder, self.attestor)
        await self.save(record)
        return record

    async def save(self, record: BuildRecord) -> None:
        """Write ``record`` (a new one, or an existing one changed), replacing any record of its key."""
        await asyncio.to_thread(self._write, record)
        old = self._records.get(record.key)
        self._index(record)
        if old is not None:
            await self._release(old)

    async def forget(self, key: BuildKey) -> BuildRecord | None:
        """Delete the record of ``key``, and the artifacts no other record names."""
        record = self._records.pop(key, None)
        if record is None:
            return None
        project = self._by_project.get(record.project, {})
        project.pop(key, None)
        if not project:
            self._by_project.pop(record.project, None)
        await asyncio.to_thread(self._path(key).unlink, missing_ok=True)
        await self._release(record)
        return record

    def _index(self, record: BuildRecord) -> None:
        """Index ``record``; the caller releases the references of a record it replaces."""
        self._records[record.key] = record
        self._by_project.setdefault(record.project, {})[record.key] = record
        self._references.update(_shas(record))

    async def _release(self, record: BuildRecord) -> None:
        for sha in _shas(record):
            self._references[sha] -= 1
            if self._references[sha] <= 0:
                del self._references[sha]
                await self.blobs.delete(sha)

    def _path(self, key: BuildKey) -> Path:
        BuildKey.checked(key.sdist_sha256, key.target)  # raises InvalidBuildKey, a ValueError
        return self._folder / key.sdist_sha256 / f"{key.target}.json"

    def _write(self, record: BuildRecord) -> None:
        path = self._path(record.key)
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{os.getpid()}")
        partial.write_bytes(record.to_json())
        os.replace(partial, path)

    def _migrate_old_layout(self) -> None:
        """Move wheelfarm-builder/2's folders (record.json next to the files) into the blob store."""
        for folder in self.root.iterdir():
            if not is_sha256(folder.name) or not folder.is_dir() or folder.is_symlink():
                continue
            for build in folder.iterdir():
                try:
                    self._migrate(build)
                except (OSError, ValueError, TypeError, KeyError) as exc:
                    log.warning("old_build_not_migrated", folder=str(build), error=str(exc))
            shutil.rmtree(folder, ignore_errors=True)

    def _migrate(self, build: Path) -> None:
        record = BuildRecord.from_json((build / "record.json").read_bytes())
        found = {
            "log_sha256": build / "build.log",
            "provenance_sha256": build / "provenance.json",
            "wheel_sha256": build / record.wheel_filename if record.wheel_filename else None,
            "metadata_sha256": build / (record.wheel_filename + ".metadata")
            if record.wheel_filename
            else None,
        }
        shas = {
            field: self.blobs.put_blocking(path).sha256
            for field, path in found.items()
            if path is not None and _plain_file(path)
        }
        record = dataclasses.replace(
            record,
            log_sha256=shas.get("log_sha256", ""),
            provenance_sha256=shas.get("provenance_sha256", ""),
            wheel_sha256=shas.get("wheel_sha256", ""),
            metadata_sha256=shas.get("metadata_sha256", ""),
        )
        self._write(record)
        log.info(
            "build_migrated", project=record.project, sdist=record.sdist_filename, target=record.key.target
        )


def _plain_file(path: Path) -> bool:
    """A regular file, not a link to one (a build's output is never followed out of its folder)."""
    return path.is_file() and not path.is_symlink()


def _shas(record: BuildRecord) -> list[str]:
    return [sha for artifact in Artifact if (sha := artifact_sha256(record, artifact))]


async def store_artifacts(
    blobs: BlobStore,
    record: BuildRecord,
    report: WorkerReport,
    folder: BuildFolder | None,
    attestor: Attestor | None = None,
) -> BuildRecord:
    """Put a finished build's log, and when it succeeded its wheel, METADATA and provenance, into ``blobs``,
    copied from the worker's own files in ``folder`` (never from the build's tree), and the farm's signed
    attestation of the wheel when there is an ``attestor``; ``record`` naming them."""
    log_file = folder.log if folder is not None else None
    if log_file is not None and await asyncio.to_thread(_plain_file, log_file):
        stored_log = await blobs.put(log_file)
    else:
        stored_log = await blobs.put(f"build failed in {report.phase}: {report.error}\n".encode())
    record = dataclasses.replace(record, log_sha256=stored_log.sha256)
    if report.ok and folder is not None:
        wheel = folder.result / report.wheel_filename
        stored_wheel = await blobs.put(wheel)
        metadata = await blobs.put(wheel.with_name(wheel.name + ".metadata"))
        provenance = await blobs.put(orjson.dumps(report.provenance, option=orjson.OPT_INDENT_2))
        record = dataclasses.replace(
            record,
            wheel_sha256=stored_wheel.sha256,
            wheel_size=stored_wheel.blob.size,
            metadata_sha256=metadata.sha256,
            provenance_sha256=provenance.sha256,
        )
        if attestor is not None:
            record = await attach_attestation(blobs, record, report.provenance, attestor)
    return record


async def attach_attestation(
    blobs: BlobStore, record: BuildRecord, facts: Mapping[str, Any], attestor: Attestor
) -> BuildRecord:
    """Sign ``record``'s wheel (its artifacts stored already: the statement names their sha256) and store
    the attestation and its PEP 740 provenance object."""
    attestation = attestor.attest(record, facts)
    envelope = await blobs.put(attestation.envelope)
    pep740 = await blobs.put(attestation.pep740)
    return dataclasses.replace(record, attestation_sha256=envelope.sha256, pep740_sha256=pep740.sha256)


def artifact_shas(record: BuildRecord) -> list[str]:
    """The blobs ``record`` names."""
    return sorted(_shas(record))
