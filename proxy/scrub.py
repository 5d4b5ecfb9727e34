"""Rehashing the whole file store in the background, at a bounded rate.

Blobs are checked while they download and on their first hit after a start; a disk can still rot one later,
and one nobody asks for would rot unseen until the day somebody needs it. The scrub reads at most
``[cache] scrub_mb_per_minute`` (a token bucket holding up to one minute's budget, empty at start: a file
larger than what is left runs it into debt, repaid before the next file), and starts a new pass at most
once per MIN_PASS_SECONDS so that a small store is not read over and over. It goes through
``FileStore.verify``, so it shares each blob's check with a client's first hit and quarantines what fails
the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from proxy.files import FileStore
from proxy.integrity import Check

log = structlog.get_logger(__name__)

MIN_PASS_SECONDS = 3600.0
LONGEST_NAP_SECONDS = 60.0


class Scrubber:
    def __init__(
        self, store: FileStore, bytes_per_minute: int, now: Callable[[], float] = time.monotonic
    ) -> None:
        if bytes_per_minute <= 0:
            raise ValueError("a scrub needs a rate above 0 bytes a minute")
        self._store = store
        self._rate = bytes_per_minute / 60.0  # bytes a second
        self._capacity = float(bytes_per_minute)
        self._budget = 0.0  # no burst at start-up, when clients arrive
        self._now = now
        self._refilled = now()

    async def run(self) -> None:
        """Pass after pass over the store, until cancelled."""
        while True:
            started = self._now()
            for key in self._store.index.sorted_keys():
                size = self._store.index.size(key)
                if size is None:
                    continue  # evicted or quarantined since the pass began
                await self._take(size)
                try:
                    check = await self._store.verify(key)
                except OSError as exc:  # unreadable folder, say: the next pass tries again
                    log.warning("scrub_check_failed", key=key, error=str(exc))
                    continue
                if check in (Check.GOOD, Check.CORRUPT):
                    self._store.counts.scrub_bytes += size
            await asyncio.sleep(max(0.0, started + MIN_PASS_SECONDS - self._now()))

    async def _take(self, size: int) -> None:
        """Wait until the bucket holds something, then take ``size`` from it (maybe into debt)."""
        while True:
            now = self._now()
            self._budget = min(self._capacity, self._budget + (now - self._refilled) * self._rate)
            self._refilled = now
            if self._budget > 0:
                break
            await asyncio.sleep(min(LONGEST_NAP_SECONDS, -self._budget / self._rate + 0.01))
        self._budget -= size
