"""The content-addressed file store and its single-flight downloads.

Files are immutable, so a verified file is kept forever under its sha256, as a blob of a LocalBlobStore
(proxy/storage/blobs.py). A download writes to the store's upload, hashes while writing, and is committed
only when hash and size match. Every client asking for a file that is being downloaded reads the same upload
as it grows.

Disks rot and fill up. A file found on disk at start is rehashed on its first hit before it is served (later
hits cost nothing more); the scrub and operators rehash the rest (proxy/storage/scrub.py). A blob whose
bytes no longer match is moved to ``quarantine/`` and downloaded again on the next request. A download the
disk has no room for is refused before the first byte (507) when its size is announced, and cut when the
disk fills mid-stream; either way nothing partial is kept.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import hashlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import structlog

from proxy.clock import Clock
from proxy.errors import InsufficientStorage, UpstreamError, WheelfarmError
from proxy.pages.upstream import Upstream
from proxy.storage.blobindex import BlobIndex
from proxy.storage.blobs import LocalBlobStore, Upload
from proxy.storage.blobs import valid_key as valid_blob_key
from proxy.storage.diskspace import DiskFullReport, Stage, free_bytes, is_disk_full, mib
from proxy.storage.gate import DownloadGate
from proxy.storage.integrity import Check, IntegrityCounts

log = structlog.get_logger(__name__)
FOLLOW_SECONDS = 0.2  # how often a process waiting for another one's download looks for its blob


class DownloadState(enum.Enum):
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


@dataclass(frozen=True, slots=True)
class FileSource:
    """Where a file comes from and what it must hash to (None: upstream gave no sha256 to check). A content
    key is that sha256 (proxy.index.model.file_key)."""

    key: str
    url: str
    sha256: str | None
    size: int | None


@dataclass(eq=False)
class Download:
    """One upstream download in progress; readers follow ``written`` bytes of ``upload.path`` (``final_path``
    once it is done) and wait on ``changed``."""

    source: FileSource
    final_path: Path
    upload: Upload | None = None  # begun by the download's task, before its first byte
    length: int | None = None  # announced: by the page (PEP 700 size) or upstream's Content-Length
    written: int = 0
    state: DownloadState = DownloadState.RUNNING
    error: WheelfarmError | None = None
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
        self.blobs = LocalBlobStore(root)
        self.gate = DownloadGate(root / "locks")  # one download per file among processes sharing root
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
        return valid_blob_key(key)

    def path_for(self, key: str) -> Path:
        return self.blobs.path_for(key)

    async def load(self) -> None:
        """Clear the downloads a previous process did not finish and index the blobs stored."""
        await asyncio.to_thread(self._load)

    def _load(self) -> None:
        self.gate.prepare()
        self.blobs.clear_partial(in_progress=self.gate.held_elsewhere)
        self.index.load(self.blobs.keys())

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
        blob = await self.blobs.get(key)
        if blob is None:
            return None
        # On disk yet unknown to the index (another process sharing the folder stored it): check it first.
        self.index.added(key, blob.size, verified=False)
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
        checked = await self.blobs.check(key)
        if checked.size is not None:  # the bytes were read, whatever the verdict
            self.counts.checked += 1
            self.counts.checked_bytes += checked.size
        if checked.check is Check.GOOD:
            self.index.verified(key)
        elif checked.check is Check.MISSING and checked.size is None and key not in self._downloads:
            # No blob to read (evicted, or quarantined by another check). One that was read, then found
            # replaced before it could be quarantined, is a fresh download's: it stays in the index.
            self.index.removed(key)
        elif checked.check is Check.CORRUPT:
            self.index.removed(key)
            self.counts.quarantined += 1
            # Logged once: the blob is gone from where it was served, so nothing finds it bad a second time.
            log.error(
                "file_corrupt_quarantined",
                key=key,
                expected_sha256=checked.expected,
                found_sha256=checked.sha256,
                read_error=checked.error,
                bytes=checked.size,
                moved_to=str(checked.moved_to),
            )
        return checked.check

    async def evict(self, keys: list[str]) -> int:
        """Remove these files (skipping any in use now); the number removed."""
        removed = 0
        for key in keys:
            if key not in self.index or self.index.in_use(key) or key in self._downloads:
                continue
            await self.blobs.delete(key)
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

    def download(self, source: FileSource) -> Download:
        """Start the download of ``source``, or join the one already running. Registered at once and its
        upload begun by its own task (a file is created: blocking): one download per key, whoever asks while
        the upload is begun, and a client that hangs up meanwhile leaves nothing behind."""
        running = self._downloads.get(source.key)
        if running is not None and running.state is DownloadState.RUNNING:
            return running
        download = Download(source, self.path_for(source.key))
        self._downloads[source.key] = download
        task = asyncio.create_task(self._run(download))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return download

    async def _run(self, download: Download) -> None:
        key = download.source.key
        held: int | None = None
        try:
            while (held := await asyncio.to_thread(self.gate.try_hold, key)) is None:
                # Another process downloads it: wait for its blob rather than ask upstream again. If that
                # process fails or dies its lock is gone, and this one takes over.
                if await self._stored_elsewhere(download):
                    return
                await asyncio.sleep(FOLLOW_SECONDS)
            if await self._stored_elsewhere(download):  # it finished between our look and our lock
                return
            await self._download(download)
        except OSError as exc:  # the lock folder itself
            await self._fail(download, WheelfarmError(f"cannot store {download.name}: {exc}"), None)
        finally:
            if held is not None:
                await asyncio.to_thread(
                    self.gate.release, key, held, remove=download.state is DownloadState.DONE
                )
            if self._downloads.get(key) is download:
                del self._downloads[key]
            await download._notify()

    async def _stored_elsewhere(self, download: Download) -> bool:
        """Whether another process stored the blob meanwhile; then ``download`` is done (readers take the
        stored file, checked first like any blob another process stored)."""
        key = download.source.key
        blob = await self.blobs.get(key)
        if blob is None:
            return False
        self.index.added(key, blob.size, verified=False)
        if await self.verify(key) is not Check.GOOD:
            return False
        download.length = download.written = blob.size
        download.state = DownloadState.DONE
        log.info("file_stored_by_another_process", key=key, bytes=blob.size)
        return True

    async def _download(self, download: Download) -> None:
        source = download.source
        digest = hashlib.sha256()
        sink: BinaryIO | None = None
        try:
            upload = download.upload = await self._begin(download)
            if source.size is not None:  # known from the page: refuse before even asking upstream
                await self._ensure_room(download, source.size)
            self.upstream_downloads += 1
            async with self._upstream.open_file(source.url) as upstream_file:
                download.length = source.size if source.size is not None else upstream_file.length
                if source.size is None and download.length is not None:
                    await self._ensure_room(download, download.length)
                sink = await asyncio.to_thread(upload.path.open, "r+b")
                async for chunk in upstream_file.chunks:
                    digest.update(chunk)
                    await asyncio.to_thread(_write_all, sink, chunk)
                    download.written += len(chunk)
                    await download._notify()
            self._verify(download, digest.hexdigest())
            await asyncio.to_thread(sink.close)
            await self.blobs.commit(upload, digest.hexdigest())
            self.index.added(source.key, download.written)
            download.state = DownloadState.DONE
            log.info("file_cached", key=source.key, bytes=download.written)
            await self.enforce_limit()
        except WheelfarmError as exc:
            await self._fail(download, exc, sink)
        except OSError as exc:
            if is_disk_full(exc):
                self.disk.report("files", Stage.DURING_DOWNLOAD, file=download.name, written=download.written)
                error: WheelfarmError = InsufficientStorage(
                    f"the proxy's cache disk filled up while storing {download.name}; it was not cached"
                )
            else:
                error = WheelfarmError(f"cannot store {download.name}: {exc}")
            await self._fail(download, error, sink)
        except asyncio.CancelledError:
            await self._fail(download, UpstreamError("download cancelled (proxy shutting down)"), sink)
            raise

    async def _begin(self, download: Download) -> Upload:
        try:
            return await asyncio.to_thread(self.blobs.begin, download.source.key)
        except OSError as exc:
            name = download.name
            if is_disk_full(exc):
                self.disk.report("files", Stage.BEFORE_DOWNLOAD, file=name, error=str(exc))
                raise InsufficientStorage(f"no room on the proxy's cache disk to store {name}") from None
            raise WheelfarmError(f"cannot store {name}: {exc}") from None

    async def _ensure_room(self, download: Download, size: int) -> None:
        """Refuse, before any byte, a file the cache disk cannot hold next to what downloads in flight still
        have to write and the ``min_free_bytes`` kept for pages and the page index."""
        free = await asyncio.to_thread(free_bytes, self.blobs.partial)
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

    async def _fail(self, download: Download, error: WheelfarmError, sink: BinaryIO | None) -> None:
        # Failed before anything awaits: a reader woken by the last chunk must find the download failed (a
        # clear error answer before any byte), not running with nothing more to come.
        download.state = DownloadState.FAILED
        download.error = error
        if not isinstance(error, InsufficientStorage):  # those the disk report has logged, rate-limited
            log.warning("file_download_failed", key=download.source.key, error=error.message)
        if sink is not None:
            # On a full disk the close fails to flush what is still buffered; the file is closed all the same.
            with contextlib.suppress(OSError):
                await asyncio.to_thread(sink.close)
        if download.upload is not None:
            await self.blobs.abort(download.upload)

    async def close(self) -> None:
        tasks = [*self._tasks, *self._checks.values()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


def _write_all(sink: BinaryIO, chunk: bytes) -> None:
    sink.write(chunk)
    # Readers use their own descriptors on the same file: flush so they see what we count as written.
    sink.flush()
