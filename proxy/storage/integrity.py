"""Checking a stored blob against the hash it was stored under, and moving a bad one aside.

Everything here blocks (reads whole files): callers run it in a thread. A blob keyed by its sha256 is checked
against its key; one keyed ``url-...`` (upstream gave no sha256) against the digest recorded beside it when
it was downloaded.
"""

from __future__ import annotations

import enum
import hashlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

HASH_CHUNK = 1 << 20  # hashlib releases the GIL on buffers this size: other threads run while we hash


class Check(enum.Enum):
    GOOD = "good"
    CORRUPT = "corrupt"  # its bytes no longer hash to what they were stored as: quarantined
    MISSING = "missing"  # gone (evicted, replaced) before it could be judged
    UNVERIFIABLE = "unverifiable"  # a url- blob stored before digests were recorded: fetched again on use


@dataclass(slots=True)
class IntegrityCounts:
    """Since the process started, for /metrics and the admin summary."""

    checked: int = 0  # blobs rehashed: first hits after a start, the scrub, operators' verify runs
    checked_bytes: int = 0
    quarantined: int = 0
    scrub_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Identity:
    """Which file on disk was hashed: a blob replaced since (a fresh download) is not the one judged."""

    device: int
    inode: int
    size: int
    mtime_ns: int

    @classmethod
    def of(cls, stat: os.stat_result) -> Identity:
        return cls(stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)


@dataclass(frozen=True, slots=True)
class Hashed:
    identity: Identity
    sha256: str | None  # None: the bytes could not be read (an I/O error is as bad as a wrong hash)
    error: str | None = None


def hash_file(path: Path) -> Hashed | None:
    """The sha256 of the file at ``path`` and which file that was; None when there is no file."""
    try:
        handle = path.open("rb", buffering=0)
    except FileNotFoundError:
        return None
    with handle:
        identity = Identity.of(os.fstat(handle.fileno()))
        digest = hashlib.sha256()
        buffer = bytearray(HASH_CHUNK)
        view = memoryview(buffer)
        try:
            while count := handle.readinto(buffer):
                digest.update(view[:count])
        except OSError as exc:
            return Hashed(identity, None, str(exc))
    return Hashed(identity, digest.hexdigest())


def quarantine(path: Path, folder: Path, key: str, identity: Identity) -> Path | None:
    """Move the blob at ``path`` into ``folder`` if it is still the file that was hashed; where it went.

    Moved, not deleted: the operator may want to see what the disk did to it. Same filesystem, so a rename.
    """
    try:
        if Identity.of(os.stat(path)) != identity:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        target = folder / f"{key}.{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.{identity.inode}"
        os.replace(path, target)
    except FileNotFoundError:
        return None
    return target


def digest_path(folder: Path, key: str) -> Path:
    return folder / key[-64:-62] / key


def read_digest(folder: Path, key: str) -> str | None:
    try:
        text = digest_path(folder, key).read_text().strip()
    except FileNotFoundError:
        return None
    return text if len(text) == 64 else None


def write_digest(folder: Path, key: str, sha256: str) -> None:
    path = digest_path(folder, key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(sha256 + "\n")


def drop_digest(folder: Path, key: str) -> None:
    digest_path(folder, key).unlink(missing_ok=True)
