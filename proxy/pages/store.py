"""The page index on disk: diskcache (SQLite) behind async methods, so the event loop never blocks on it.

A page is two entries: its small freshness record (rewritten on every revalidation) and its body (written
only when upstream sends new content). A write the disk has no room for is reported and skipped: the page
cache still holds the page in memory, and a page not kept is only fetched again later.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any, TypedDict, cast

import diskcache

from proxy.storage.diskspace import DiskFullReport, Stage, is_disk_full


class PageMeta(TypedDict):
    """What we know about one cached upstream answer (the wire shape stored on disk)."""

    found: bool
    url: str
    content_type: str
    etag: str | None
    serial: int | None
    fetched_at: float
    version: str  # digest of the body: changes exactly when the content does


class PageStore:
    def __init__(self, directory: Path, max_bytes: int = 1 << 30, disk: DiskFullReport | None = None) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self._disk = disk if disk is not None else DiskFullReport()
        # Values over diskcache's threshold (32 KiB) go to files beside the SQLite index; past max_bytes
        # diskcache culls the least recently read entries.
        self._cache = diskcache.Cache(
            str(directory), size_limit=max_bytes, eviction_policy="least-recently-used", cull_limit=16
        )

    async def stats(self) -> tuple[int, int]:
        """(pages cached, bytes on disk)."""
        return await asyncio.to_thread(self._stats)

    def _stats(self) -> tuple[int, int]:
        pages = sum(
            1 for key in self._cache.iterkeys() if isinstance(key, str) and key.startswith("meta:project:")
        )
        return pages, int(self._cache.volume())

    async def get_meta(self, key: str) -> PageMeta | None:
        value: Any = await asyncio.to_thread(self._cache.get, "meta:" + key)
        return cast(PageMeta, value) if isinstance(value, dict) else None

    async def get_body(self, key: str) -> bytes | None:
        value: Any = await asyncio.to_thread(self._cache.get, "body:" + key)
        return value if isinstance(value, bytes) else None

    async def put(self, key: str, meta: PageMeta, body: bytes | None = None) -> bool:
        """Store ``meta``; also ``body`` when given (None keeps the body stored before). False: the disk is
        full, nothing was written (the transaction rolled back) and the report has it."""
        try:
            await asyncio.to_thread(self._put, key, meta, body)
        except (OSError, sqlite3.Error) as exc:
            if not is_disk_full(exc):
                raise
            self._disk.report("pages", Stage.WRITE, key=key, error=str(exc))
            return False
        return True

    def _put(self, key: str, meta: PageMeta, body: bytes | None) -> None:
        with self._cache.transact():
            if body is not None:
                self._cache.set("body:" + key, body)
            elif not meta["found"]:
                self._cache.delete("body:" + key)
            self._cache.set("meta:" + key, meta)

    async def delete(self, key: str) -> bool:
        return bool(await asyncio.to_thread(self._delete, key))

    def _delete(self, key: str) -> bool:
        with self._cache.transact():
            self._cache.delete("body:" + key)
            return bool(self._cache.delete("meta:" + key))

    def close(self) -> None:
        self._cache.close()
