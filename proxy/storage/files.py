"""The content-addressed file store and its single-flight downloads.

Files are immutable, so a verified file is kept forever under its sha256. A download writes to a temporary
file in the store's own folder, hashes while writing, and is renamed into place only when hash and size
match. Every client asking for a file that is being downloaded reads the same temporary file as it grows.

Disks rot and fill up. A file found on disk at start is rehashed on its first hit before it is served (later
hits cost nothing more); the scrub and operators rehash the rest (proxy/storage/scrub.py). A blob whose
bytes no longer match is moved to ``quarantine/`` and downloaded again on the next request. A download the
disk has no room for is refused before the first byte (507) when its size is announced, and cut when the
disk fills mid-stream; either way nothing partial is kept.
"""

from __future__ import annotations

import asyncio
import enum
import hashlib
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import structlog

from proxy.clock import Clock
from proxy.errors import InsufficientStorage, UpstreamError, WheelfarmError
from proxy.pages.upstream import Upstream
from proxy.storage.blobindex import BlobIndex
from proxy.storage.diskspace import DiskFullReport, Stage, free_bytes, is_disk_full, mib
from proxy.storage.integrity import (
    Check,
    IntegrityCounts,
    drop_digest,
    hash_file,
    quarantine,
    read_digest,
    write_digest,
)

log = structlog.get_logger(__name__)

_KEY = re.compile(r"^(url-)?[0-9a-f]{64}$")


class DownloadState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class FileSource:
    """Where a file comes from and what it must hash to (None: upstream gave no sha256 to check)."""

    key: str
    url: str
    sha256: str | None
    size: int | None


@dataclass(eq=False)
class Download:
    """One upstream download in progress; readers follow ``written`` and wait on ``changed``."""

    source: FileSource
    temp_path: Path
    final_path: Path
    length: int | None = None  # announced: by the page (PEP 700 size) or upstream's Content-Length
    written: int = 0
    state: DownloadState = DownloadState.RUNNING
    error: WheelfarmError | None = None
    started: asyncio.Event = field(default_factory=asyncio.Event)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def wait_for_more(self, seen: int) -> None:
        """Return once more than ``seen`` bytes are written, or the download has ended."""
        async with self.changed:
            await self.changed.wait_for(
                lambda: self.written > seen or self.state is not DownloadState.RUNNING
            )

    async def wait_done(self) -> None:
        async with self.changed:
            await self.changed.wait_for(lambda: self.state is not DownloadState.RUNNING)

    async def _notify(self) -> None:
        async with self.changed:
            self.changed.notify_all()

    @property
    def name(self) -> str:
        return self.source.url.rsplit("/", 1)[-1]

    @property
    def still_to_write(self) -> int:
        expected = self.length if self.length is not None else self.source.size
        return max(0, (expected or 0) - self.written) if self.state is DownloadState.RUNNING else 0


class FileStore:
    def __init__(
        self,
        root: Path,
        upstream: Upstream,
        clock: Clock,
        max_bytes: int = 0,
        *,
        min_free_bytes: int = 0,
        disk: DiskFullReport | None = None,
    ) -> None:
        """``max_bytes`` > 0 bounds the store: least recently used files are evicted past it. A download that
        would leave less than ``min_free_bytes`` free on the disk is refused; ``disk`` hears of each."""
        self._blobs = root / "blobs"
        self._partial = root / "partial"
        self._quarantine = root / "quarantine"
        self._digests = root / "digests"  # sha256 of url- keyed blobs, written as they are published
        self._blobs.mkdir(parents=True, exist_ok=True)
        self._partial.mkdir(parents=True, exist_ok=True)
        for leftover in self._partial.iterdir():  # downloads a previous process did not finish
            leftover.unlink(missing_ok=True)
        self._upstream = upstream
        self._clock = clock
        self.max_bytes = max_bytes
        self.min_free_bytes = min_free_bytes
        self.disk = disk if disk is not None else DiskFullReport()
        self.index = BlobIndex(clock)
        self.evictions = 0
        self.counts = IntegrityCounts()
        self._downloads: dict[str, Download] = {}
        self._tasks: set[asyncio.Task[None]] = set()  # referenced, so running downloads are not collected
        self._checks: dict[str, asyncio.Task[Check]] = {}  # one rehash per blob at a time, shared
        self.upstream_downloads = 0

    @staticmethod
    def valid_key(key: str) -> bool:
        return bool(_KEY.match(key))

    def path_for(self, key: str) -> Path:
        if not self.valid_key(key):
            raise ValueError(f"not a file key: {key!r}")
        return self._blobs / key[-64:-62] / key

    async def load(self) -> None:
        await asyncio.to_thread(self.index.load, self._blobs)

    async def cached(self, key: str) -> Path | None:
        """The path of a stored, checked blob; None when it must be downloaded (absent, or found bad)."""
        path = self.path_for(key)
        entry = self.index.touched(key)
        if entry is not None:
            if entry.verified:  # the warm path: one dict lookup and a flag
                return path
            return path if await self.verify(key) is Check.GOOD else None
        if key in self._downloads:
            # Not there yet (the index learns of a file when its download ends): no disk check, which would
            # cost every client joining a download a thread hop just when they all arrive at once.
            return None
        size = await asyncio.to_thread(_size_of, path)
        if size is None:
            return None
        # On disk yet unknown to the index (another process sharing the folder stored it): check it first.
        self.index.added(key, size, verified=False)
        return path if await self.verify(key) is Check.GOOD else None

    async def verify(self, key: str) -> Check:
        """Rehash a stored blob; a bad one is quarantined. Concurrent callers share one check, which runs as
        its own task so a client that hangs up does not cancel it for the others."""
        task = self._checks.get(key)
        if task is None:
            task = asyncio.create_task(self._check(key))
            self._checks[key] = task
            task.add_done_callback(lambda _: self._checks.pop(key, None))
        return await asyncio.shield(task)

    async def _check(self, key: str) -> Check:
        expected: str | None = key
        if key.startswith("url-"):
            expected = await asyncio.to_thread(read_digest, self._digests, key)
            if expected is None:
                return Check.UNVERIFIABLE
        path = self.path_for(key)
        hashed = await asyncio.to_thread(hash_file, path)
        if hashed is None:
            if key not in self._downloads:
                self.index.removed(key)
            return Check.MISSING
        self.counts.checked += 1
        self.counts.checked_bytes += hashed.identity.size
        if hashed.sha256 == expected:
            self.index.verified(key)
            return Check.GOOD
        moved = await asyncio.to_thread(quarantine, path, self._quarantine, key, hashed.identity)
        if moved is None:
            return Check.MISSING  # replaced since it was read (downloaded again): not the file judged
        self.index.removed(key)
        if key.startswith("url-"):
            await asyncio.to_thread(drop_digest, self._digests, key)
        self.counts.quarantined += 1
        # Logged once: the blob is gone from where it was served, so nothing finds it bad a second time.
        log.error(
            "file_corrupt_quarantined",
            key=key,
            expected_sha256=expected,
            found_sha256=hashed.sha256,
            read_error=hashed.error,
            bytes=hashed.identity.size,
            moved_to=str(moved),
        )
        return Check.CORRUPT

    async def evict(self, keys: list[str]) -> int:
        """Remove these files (skipping any in use now); the number removed."""
        removed = 0
        for key in keys:
            if key not in self.index or self.index.in_use(key) or key in self._downloads:
                continue
            await asyncio.to_thread(self._remove, key)
            self.index.removed(key)
            removed += 1
            log.info("file_evicted", key=key)
        self.evictions += removed
        return removed

    async def enforce_limit(self) -> int:
        if self.max_bytes <= 0 or self.index.total_bytes <= self.max_bytes:
            return 0
        return await self.evict(self.index.over_limit(self.max_bytes))

    async def evict_unused_since(self, seconds: float) -> int:
        return await self.evict(self.index.unused_since(self._clock.now() - seconds))

    @property
    def upstream(self) -> Upstream:
        """Where files come from (web_files passes unverifiable ones straight through)."""
        return self._upstream

    def _remove(self, key: str) -> None:
        self.path_for(key).unlink(missing_ok=True)
        if key.startswith("url-"):
            drop_digest(self._digests, key)

    def download(self, source: FileSource) -> Download:
        """Start the download of ``source``, or join the one already running."""
        running = self._downloads.get(source.key)
        if running is not None and running.state is DownloadState.RUNNING:
            return running
        try:
            fd, temp_name = tempfile.mkstemp(dir=self._partial, prefix=source.key[:16] + ".")
        except OSError as exc:
            name = source.url.rsplit("/", 1)[-1]
            if is_disk_full(exc):
                self.disk.report("files", Stage.BEFORE_DOWNLOAD, file=name, error=str(exc))
                raise InsufficientStorage(f"no room on the proxy's cache disk to store {name}") from None
            raise WheelfarmError(f"cannot store {name}: {exc}") from None
        os.close(fd)
        download = Download(source, Path(temp_name), self.path_for(source.key))
        self._downloads[source.key] = download
        task = asyncio.create_task(self._run(download))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return download

    async def _run(self, download: Download) -> None:
        source = download.source
        digest = hashlib.sha256()
        try:
            if source.size is not None:  # known from the page: refuse before even asking upstream
                await self._ensure_room(download, source.size)
            self.upstream_downloads += 1
            async with self._upstream.open_file(source.url) as upstream_file:
                download.length = source.size if source.size is not None else upstream_file.length
                if source.size is None and download.length is not None:
                    await self._ensure_room(download, download.length)
                download.started.set()
                with download.temp_path.open("r+b") as sink:
                    async for chunk in upstream_file.chunks:
                        digest.update(chunk)
                        await asyncio.to_thread(_write_all, sink, chunk)
                        download.written += len(chunk)
                        await download._notify()
            self._verify(download, digest.hexdigest())
            digests = self._digests if source.key.startswith("url-") else None
            await asyncio.to_thread(_publish, download, digest.hexdigest(), digests)
            self.index.added(source.key, download.written)
            download.state = DownloadState.DONE
            log.info("file_cached", key=source.key, bytes=download.written)
            await self.enforce_limit()
        except WheelfarmError as exc:
            self._fail(download, exc)
        except OSError as exc:
            if is_disk_full(exc):
                self.disk.report("files", Stage.DURING_DOWNLOAD, file=download.name, written=download.written)
                error: WheelfarmError = InsufficientStorage(
                    f"the proxy's cache disk filled up while storing {download.name}; it was not cached"
                )
            else:
                error = WheelfarmError(f"cannot store {download.name}: {exc}")
            self._fail(download, error)
        except asyncio.CancelledError:
            self._fail(download, UpstreamError("download cancelled (proxy shutting down)"))
            raise
        finally:
            download.started.set()
            if self._downloads.get(source.key) is download:
                del self._downloads[source.key]
            await download._notify()

    async def _ensure_room(self, download: Download, size: int) -> None:
        """Refuse, before any byte, a file the cache disk cannot hold next to what downloads in flight still
        have to write and the ``min_free_bytes`` kept for pages and the page index."""
        free = await asyncio.to_thread(free_bytes, self._partial)
        promised = sum(d.still_to_write for d in self._downloads.values() if d is not download)
        if free - promised - size >= self.min_free_bytes:
            return
        self.disk.report(
            "files", Stage.BEFORE_DOWNLOAD, file=download.name, size=size, free=free, promised=promised
        )
        raise InsufficientStorage(
            f"not enough room on the proxy's cache disk for {download.name} ({mib(size)}): {mib(free)} free, "
            f"{mib(promised)} of it promised to downloads in progress and {mib(self.min_free_bytes)} kept "
            "free ([cache] min_free_mb). Nothing was downloaded; try again once the operator has freed space."
        )

    def _verify(self, download: Download, sha256: str) -> None:
        source = download.source
        name = source.url.rsplit("/", 1)[-1]
        if download.length is not None and download.written != download.length:
            raise UpstreamError(
                f"upstream sent {download.written} bytes of {name}, expected {download.length}; not cached"
            )
        if source.sha256 is not None and sha256 != source.sha256:
            raise UpstreamError(
                f"{name} from upstream has sha256 {sha256}, but the index says {source.sha256}; not cached"
            )

    def _fail(self, download: Download, error: WheelfarmError) -> None:
        download.state = DownloadState.FAILED
        download.error = error
        if not isinstance(error, InsufficientStorage):  # those the disk report has logged, rate-limited
            log.warning("file_download_failed", key=download.source.key, error=error.message)
        download.temp_path.unlink(missing_ok=True)

    async def close(self) -> None:
        tasks = [*self._tasks, *self._checks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _write_all(sink: BinaryIO, chunk: bytes) -> None:
    sink.write(chunk)
    # Readers use their own descriptors on the same file: flush so they see what we count as written.
    sink.flush()


def _publish(download: Download, sha256: str, digests: Path | None) -> None:
    if digests is not None:  # first: a url- blob is never in place without what to check it against
        write_digest(digests, download.source.key, sha256)
    download.final_path.parent.mkdir(parents=True, exist_ok=True)
    # Atomic on one filesystem: readers see no file or the whole file.
    os.replace(download.temp_path, download.final_path)


def _size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return None
