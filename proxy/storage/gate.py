"""One upstream download per file among every process that shares a file store's folder.

Within a process, ``FileStore`` already joins every client asking for a file to one download. Across
processes (``wheelfarm serve --processes N``, or hosts sharing the folder) the downloader holds an exclusive
``flock`` on ``<root>/locks/<key>`` while it downloads; a process that cannot take it waits for the blob to
appear instead of asking upstream too. The kernel drops the lock when its holder dies (kill -9 included), so
a crashed downloader never leaves a file locked: the next process to look takes over. flock is advisory and
per open file description (flock(2)); on NFS, Linux maps it to byte-range locks the server arbitrates.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path


class DownloadGate:
    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def prepare(self) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)

    def try_hold(self, key: str) -> int | None:
        """A descriptor holding ``key``'s lock, or None while another process holds it (blocking: call it in
        a thread). ``key`` is a valid blob key (the caller checked it): a plain file name."""
        fd = os.open(self.folder / key, os.O_CREAT | os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return None
        return fd

    def held_elsewhere(self, key: str) -> bool:
        """Whether some process holds ``key``'s lock now (its download is in progress)."""
        if not (self.folder / key).exists():
            return False
        fd = self.try_hold(key)
        if fd is None:
            return True
        self.release(key, fd, remove=False)
        return False

    def release(self, key: str, fd: int, *, remove: bool = True) -> None:
        """Let go of ``key``. ``remove``: its blob is stored, so the lock file goes too; a process that opened
        it just before finds the blob when it looks, which it does once it holds the lock."""
        if remove:
            with contextlib.suppress(FileNotFoundError):
                (self.folder / key).unlink()
        os.close(fd)
