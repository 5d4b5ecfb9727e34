"""The page index on disk: diskcache (SQLite) behind async methods, so the event loop never blocks on it."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any, TypedDict, cast

import diskcache


class PageRecord(TypedDict):
    """One cached upstream answer for a page (the wire shape stored on disk)."""

    found: bool
    url: str
    body: bytes
    content_type: str
    etag: str | None
    serial: int | None
    fetched_at: float


class PageStore:
    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        # A small SQLite-backed index; bodies over 32 KiB go to files next to it (diskcache's own layout).
        self._cache = diskcache.Cache(str(directory), size_limit=2**34, eviction_policy="least-recently-used")

    async def get(self, key: str) -> PageRecord | None:
        value: Any = await asyncio.to_thread(self._cache.get, key)
        return cast(PageRecord, value) if isinstance(value, dict) else None

    async def put(self, key: str, record: PageRecord) -> None:
        await asyncio.to_thread(self._cache.set, key, record)

    async def delete(self, key: str) -> bool:
        return bool(await asyncio.to_thread(self._cache.delete, key))

    def close(self) -> None:
        self._cache.close()
