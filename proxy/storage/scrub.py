"""Rehashing the whole file store: a background scrub at a bounded rate, and a pass an operator asks for.

Blobs are checked while they download and on their first hit after a start; a disk can still rot one later,
and one nobody asks for would rot unseen until the day somebody needs it. The scrub reads at most
``[cache] scrub_mb_per_minute`` (a token bucket holding up to one minute's budget, empty at start: a file
larger than what is left runs it into debt, repaid before the next file), and starts a new pass at most
once per MIN_PASS_SECONDS so that a small store is not read over and over. Both go through
``FileStore.verify``, so they share each blob's check with a client's first hit and quarantine what fails
the same way.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypedDict

import structlog

from proxy.clock import Clock
from proxy.storage.files import FileStore
from proxy.storage.integrity import Check

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


class VerifyView(TypedDict):
    """The admin API's report of a verify run (wire shape)."""

    state: str
    started_at: float
    finished_at: float | None
    total: int
    checked: int
    bytes_checked: int
    corrupt: int
    missing: int
    unverifiable: int
    quarantined: list[str]


QUARANTINED_SHOWN = 1000  # keys listed in a report; the count is always whole


@dataclass(eq=False)
class VerifyRun:
    started_at: float
    total: int
    finished_at: float | None = None
    checked: int = 0
    bytes_checked: int = 0
    corrupt: int = 0
    missing: int = 0
    unverifiable: int = 0
    quarantined: list[str] = field(default_factory=list)

    def tally(self, key: str, check: Check, size: int) -> None:
        if check is Check.MISSING:
            self.missing += 1
        elif check is Check.UNVERIFIABLE:
            self.unverifiable += 1
        else:
            self.checked += 1
            self.bytes_checked += size
        if check is Check.CORRUPT:
            self.corrupt += 1
            if len(self.quarantined) < QUARANTINED_SHOWN:
                self.quarantined.append(key)

    def view(self) -> VerifyView:
        return VerifyView(
            state="running" if self.finished_at is None else "done",
            started_at=self.started_at,
            finished_at=self.finished_at,
            total=self.total,
            checked=self.checked,
            bytes_checked=self.bytes_checked,
            corrupt=self.corrupt,
            missing=self.missing,
            unverifiable=self.unverifiable,
            quarantined=list(self.quarantined),
        )


class Verifier:
    """The operator's whole-store rehash, as fast as the disk allows: one run at a time, the last one's report
    kept. It runs as a task of its own: a verify of a large store outlasts any HTTP request."""

    def __init__(self, store: FileStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock
        self._task: asyncio.Task[None] | None = None
        self.last: VerifyRun | None = None

    def start(self) -> VerifyRun:
        """Start a run, or return the one running."""
        if self.last is not None and self._task is not None and not self._task.done():
            return self.last
        keys = self._store.index.sorted_keys()
        run = VerifyRun(started_at=self._clock.now(), total=len(keys))
        self.last = run
        self._task = asyncio.create_task(self._run(run, keys))
        return run

    async def _run(self, run: VerifyRun, keys: list[str]) -> None:
        log.info("cache_verify_started", files=run.total)
        for key in keys:
            size = self._store.index.size(key)
            try:
                check = Check.MISSING if size is None else await self._store.verify(key)
            except OSError as exc:
                log.warning("cache_verify_check_failed", key=key, error=str(exc))
                check = Check.MISSING
            run.tally(key, check, size or 0)
        run.finished_at = self._clock.now()
        log.info(
            "cache_verify_done",
            checked=run.checked,
            bytes=run.bytes_checked,
            corrupt=run.corrupt,
            missing=run.missing,
            unverifiable=run.unverifiable,
        )

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
