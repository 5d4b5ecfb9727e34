"""Room on the cache disk: how much is free, and one rate-limited voice for when there is none.

A full disk fails many writes at once (every download, every page write, for as long as it stays full). The
operator needs to hear it clearly and once, not once per chunk or per request: the first failure is logged
as an error, later ones within LOG_INTERVAL_SECONDS only counted (in /metrics, and in the next line).
"""

from __future__ import annotations

import enum
import errno
import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import structlog

log = structlog.get_logger(__name__)

LOG_INTERVAL_SECONDS = 60.0
_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


class Stage(enum.Enum):
    BEFORE_DOWNLOAD = "before_download"  # refused before any byte: the announced size does not fit
    DURING_DOWNLOAD = "during_download"  # ran out mid-stream: that download is cut, nothing is kept
    WRITE = "write"  # a page could not be stored: it is served from memory and fetched again later


def is_disk_full(exc: BaseException) -> bool:
    """ENOSPC or a quota from the filesystem, or SQLite's SQLITE_FULL (the page index)."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL_ERRNOS
    return isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


def free_bytes(folder: Path) -> int:
    """Bytes an unprivileged writer may still use on ``folder``'s filesystem (blocking: a statvfs)."""
    stat = os.statvfs(folder)
    return stat.f_bavail * stat.f_frsize


def mib(count: int) -> str:
    return f"{count / (1 << 20):.1f} MiB"


class DiskFullReport:
    """Counts every time the cache disk was too full (by store and stage, for /metrics) and logs it at most
    once per ``interval`` seconds. One per application: pages and files share a disk, and one voice."""

    def __init__(self, interval: float = LOG_INTERVAL_SECONDS, now: Callable[[], float] = time.monotonic):
        self.counts: Counter[tuple[str, Stage]] = Counter()
        self._interval = interval
        self._now = now
        self._last_logged: float | None = None
        self._unlogged = 0

    def report(self, store: str, stage: Stage, **details: object) -> None:
        self.counts[store, stage] += 1
        now = self._now()
        if self._last_logged is not None and now - self._last_logged < self._interval:
            self._unlogged += 1
            return
        log.error(
            "cache_disk_full",
            store=store,
            stage=stage.value,
            **details,
            also_since_last_line=self._unlogged,
            next_line_in_seconds=self._interval,
            hint="free space on the cache disk, or lower [cache] max_file_mb / max_page_mb below its size",
        )
        self._last_logged = now
        self._unlogged = 0
