"""The artifact store: bytes kept under keys, written whole or not at all.

Two kinds of key. A content key is the sha256 of the bytes (64 hex digits): distribution files upstream
hashed, and every artifact a build leaves (wheel, METADATA, log, provenance). A named key (``url-`` and 64
hex digits) holds bytes nobody hashed for us (a file upstream lists without a sha256); its digest is
recorded when it is stored, so it can be checked like the others. Nothing else is a key: a key never names a
path.

Writes go through an ``Upload``: a temporary file inside the store that readers may follow while it grows
(clients of a download in progress do), made visible under its key only by ``commit`` (a rename: readers
see no blob or the whole blob). ``LocalBlobStore`` is a folder on a local or shared (NFS-style) disk;
another store (an object store) implements the same protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import os
import re
import tempfile
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Protocol

from proxy.storage.integrity import Check, drop_digest, hash_file, quarantine, read_digest, write_digest

_CONTENT_KEY = re.compile(r"^[0-9a-f]{64}\Z")  # \Z, not $: no trailing newline
_NAMED_KEY = re.compile(r"^url-[0-9a-f]{64}\Z")
READ_CHUNK = 1 << 20


class BadKey(ValueError):
    """Not a key of this store (a content sha256, or ``url-`` and one)."""


def content_key(key: str) -> bool:
    return bool(_CONTENT_KEY.match(key))


def valid_key(key: str) -> bool:
    return bool(_CONTENT_KEY.match(key) or _NAMED_KEY.match(key))


@dataclass(frozen=True, slots=True)
class Blob:
    """A stored blob: its key, size, and (for stores on a filesystem) the path to serve it from with
    sendfile. Read it through the store (``read``, ``chunks``) to work with any store."""

    key: str
    size: int
    path: Path | None = None


@dataclass(frozen=True, slots=True)
class Stored:
    """What ``put`` and ``commit`` answer: the blob and the sha256 of its bytes."""

    blob: Blob
    sha256: str


@dataclass(frozen=True, slots=True)
class Checked:
    """What ``check`` found: its verdict, what the blob must hash to (``expected``) and what it did hash to
    (``sha256``: None when unread or unreadable, ``error`` then says why), the bytes read (``size``: None when
    there was no blob to read), and where a bad blob was moved."""

    check: Check
    expected: str | None = None
    sha256: str | None = None
    size: int | None = None
    error: str | None = None
    moved_to: Path | None = None


@dataclass(eq=False)
class Upload:
    """A blob being written: append to ``path`` (readers may follow it), then commit or abort."""

    key: str
    path: Path


class BlobStore(Protocol):
    def begin(self, key: str) -> Upload:
        """Start writing the blob ``key`` (blocking: a file is created). Raises BadKey."""
        ...

    async def commit(self, upload: Upload, sha256: str) -> Stored:
        """Make the upload visible under its key. ``sha256`` is what the writer hashed while writing; a
        content key must equal it (else ValueError and nothing is kept); a named key records it."""
        ...

    async def abort(self, upload: Upload) -> None: ...

    async def put(self, source: Path | bytes, key: str | None = None) -> Stored:
        """Store a whole file or bytes, under their sha256 (``key`` None) or the named ``key``."""
        ...

    async def get(self, key: str) -> Blob | None:
        """The blob, if stored (no hashing: see ``check``)."""
        ...

    async def read(self, key: str, limit: int | None = None) -> bytes | None:
        """The blob's bytes (at most ``limit``), if stored."""
        ...

    def chunks(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        """The bytes from ``start`` up to ``end`` (exclusive), in chunks; FileNotFoundError if absent."""
        ...

    async def delete(self, key: str) -> bool: ...

    async def check(self, key: str) -> Checked:
        """Rehash the blob against its key (or recorded digest); a bad one is moved to quarantine."""
        ...

    def keys(self) -> Iterator[tuple[str, int, float]]:
        """(key, size, modification time) of every blob (blocking: run it in a thread)."""
        ...


class LocalBlobStore:
    """Blobs in a folder: ``blobs/<2 hex>/<key>``, uploads in ``partial/``, named keys' digests in
    ``digests/``, bad blobs moved to ``quarantine/``. Several processes may share it (all writes are
    renames within one filesystem)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.blobs = root / "blobs"
        self.partial = root / "partial"
        self.quarantined = root / "quarantine"
        self.digests = root / "digests"
        self.blobs.mkdir(parents=True, exist_ok=True)
        self.partial.mkdir(parents=True, exist_ok=True)

    def clear_partial(self, in_progress: Callable[[str], bool] = lambda key: False) -> None:
        """Remove uploads no process finished; ``in_progress(key)`` spares those another process sharing
        the store is still writing (their names start with the key)."""
        for leftover in self.partial.iterdir():
            if not in_progress(leftover.name.rsplit(".", 1)[0]):
                leftover.unlink(missing_ok=True)

    def path_for(self, key: str) -> Path:
        if not valid_key(key):
            raise BadKey(f"not a blob key: {key!r}")
        return self.blobs / key[-64:-62] / key

    def begin(self, key: str) -> Upload:
        self.path_for(key)  # validates
        fd, name = tempfile.mkstemp(dir=self.partial, prefix=key + ".")  # the key: whose upload it is
        os.close(fd)
        return Upload(key, Path(name))

    async def commit(self, upload: Upload, sha256: str) -> Stored:
        return await asyncio.to_thread(self._commit, upload, sha256)

    def _commit(self, upload: Upload, sha256: str) -> Stored:
        key = upload.key
        if content_key(key) and key != sha256:
            upload.path.unlink(missing_ok=True)
            raise ValueError(f"the bytes hash to {sha256}, not to their key {key}")
        if not content_key(key):  # first: a named blob is never in place without what to check it against
            write_digest(self.digests, key, sha256)
        final = self.path_for(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(upload.path, final)
        return Stored(Blob(key, final.stat().st_size, final), sha256)

    async def abort(self, upload: Upload) -> None:
        await asyncio.to_thread(upload.path.unlink, missing_ok=True)

    async def put(self, source: Path | bytes, key: str | None = None) -> Stored:
        return await asyncio.to_thread(self.put_blocking, source, key)

    def put_blocking(self, source: Path | bytes, key: str | None = None) -> Stored:
        """``put`` in this thread (for work already in a thread)."""
        data = source if isinstance(source, bytes) else None
        digest = hashlib.sha256()
        if data is not None:
            digest.update(data)
        else:
            assert isinstance(source, Path)
            with source.open("rb") as handle:
                while chunk := handle.read(READ_CHUNK):
                    digest.update(chunk)
        sha256 = digest.hexdigest()
        upload = self.begin(key or sha256)
        try:
            if data is not None:
                upload.path.write_bytes(data)
            else:
                assert isinstance(source, Path)
                with source.open("rb") as reader, upload.path.open("wb") as writer:
                    while chunk := reader.read(READ_CHUNK):
                        writer.write(chunk)
            return self._commit(upload, sha256)
        except BaseException:
            upload.path.unlink(missing_ok=True)
            raise

    async def get(self, key: str) -> Blob | None:
        return await asyncio.to_thread(self.stat, key)

    def stat(self, key: str) -> Blob | None:
        """``get`` without a thread hop (blocking, one stat)."""
        path = self.path_for(key)
        try:
            return Blob(key, path.stat().st_size, path)
        except FileNotFoundError:
            return None

    async def read(self, key: str, limit: int | None = None) -> bytes | None:
        return await asyncio.to_thread(self._read, key, limit)

    def _read(self, key: str, limit: int | None) -> bytes | None:
        try:
            with self.path_for(key).open("rb") as handle:
                return handle.read() if limit is None else handle.read(limit)
        except FileNotFoundError:
            return None

    async def chunks(self, key: str, start: int = 0, end: int | None = None) -> AsyncIterator[bytes]:
        handle = await asyncio.to_thread(self.path_for(key).open, "rb")
        try:
            await asyncio.to_thread(handle.seek, start)
            position = start
            while end is None or position < end:
                want = READ_CHUNK if end is None else min(READ_CHUNK, end - position)
                chunk = await asyncio.to_thread(handle.read, want)
                if not chunk:
                    return
                position += len(chunk)
                yield chunk
        finally:
            await asyncio.to_thread(handle.close)

    async def delete(self, key: str) -> bool:
        return await asyncio.to_thread(self._delete, key)

    def _delete(self, key: str) -> bool:
        path = self.path_for(key)
        try:
            path.unlink()
        except FileNotFoundError:
            return False
        if not content_key(key):
            drop_digest(self.digests, key)
        return True

    async def check(self, key: str) -> Checked:
        return await asyncio.to_thread(self._check, key)

    def _check(self, key: str) -> Checked:
        expected: str | None = key
        if not content_key(key):
            expected = read_digest(self.digests, key)
            if expected is None:
                return Checked(Check.UNVERIFIABLE)
        path = self.path_for(key)
        hashed = hash_file(path)
        if hashed is None:
            return Checked(Check.MISSING, expected)
        read = Checked(Check.GOOD, expected, hashed.sha256, hashed.identity.size, hashed.error)
        if hashed.sha256 == expected:
            return read
        moved = quarantine(path, self.quarantined, key, hashed.identity)
        if moved is None:  # replaced since it was read (stored again): not the blob judged
            return replace(read, check=Check.MISSING)
        if not content_key(key):
            drop_digest(self.digests, key)
        return replace(read, check=Check.CORRUPT, moved_to=moved)

    def keys(self) -> Iterator[tuple[str, int, float]]:
        for folder in self.blobs.iterdir():
            if not folder.is_dir():
                continue
            for entry in os.scandir(folder):
                with contextlib.suppress(OSError):
                    stat = entry.stat()
                    if valid_key(entry.name):
                        yield entry.name, stat.st_size, stat.st_mtime
