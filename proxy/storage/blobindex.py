"""What the file store holds, how big, when last used, and what is in use: the basis of its size limit.

Least recently used files go first; a file being served or built from is leased and never evicted. Access
times live in memory (a restart starts them at each file's download time): writing them to the files
would change the validators clients already hold. So does whether a file was checked since this process
started: a file found on disk at start is not trusted until its first hit rehashes it.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from proxy.clock import Clock


@dataclass(slots=True)
class BlobEntry:
    size: int
    last_access: float
    verified: bool  # hashed by this process (downloaded, or rehashed since the start)


class BlobIndex:
    def __init__(self, clock: Clock) -> None:
        self._clock = clock
        self._entries: dict[str, BlobEntry] = {}
        self._leases: Counter[str] = Counter()
        self.total_bytes = 0

    def load(self, blobs: Iterable[tuple[str, int, float]]) -> None:
        """Index the blobs already stored, as (key, size, modification time): not yet checked by this
        process. A store lists them as it reads its disk: run this in a thread at start."""
        for key, size, mtime in blobs:
            self.added(key, size, mtime, verified=False)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def added(self, key: str, size: int, when: float | None = None, *, verified: bool = True) -> None:
        self.removed(key)
        self._entries[key] = BlobEntry(size, self._clock.now() if when is None else when, verified)
        self.total_bytes += size

    def touched(self, key: str) -> BlobEntry | None:
        """Note a use of ``key`` now; its entry (None: not stored)."""
        entry = self._entries.get(key)
        if entry is not None:
            entry.last_access = self._clock.now()
        return entry

    def verified(self, key: str) -> None:
        entry = self._entries.get(key)
        if entry is not None:
            entry.verified = True

    def sorted_keys(self) -> list[str]:
        """A sorted snapshot (a stable order for a pass over the store)."""
        return sorted(self._entries)

    def removed(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.total_bytes -= entry.size

    def size(self, key: str) -> int | None:
        entry = self._entries.get(key)
        return entry.size if entry is not None else None

    @contextlib.contextmanager
    def lease(self, key: str) -> Iterator[None]:
        self._leases[key] += 1
        try:
            yield
        finally:
            self._leases[key] -= 1
            if self._leases[key] <= 0:
                del self._leases[key]

    def in_use(self, key: str) -> bool:
        return self._leases[key] > 0

    def over_limit(self, max_bytes: int) -> list[str]:
        """Keys to evict, least recently used first, until the total fits in ``max_bytes``."""
        excess = self.total_bytes - max_bytes
        chosen: list[str] = []
        for key, entry in sorted(self._entries.items(), key=lambda item: (item[1].last_access, item[0])):
            if excess <= 0:
                break
            if not self.in_use(key):
                chosen.append(key)
                excess -= entry.size
        return chosen

    def unused_since(self, cutoff: float) -> list[str]:
        return sorted(
            key for key, entry in self._entries.items() if entry.last_access < cutoff and not self.in_use(key)
        )
