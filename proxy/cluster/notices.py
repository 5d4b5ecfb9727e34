"""What a cluster process hears from the others, through PostgreSQL's ``LISTEN``/``NOTIFY``: a build ended
or was forgotten (the queue's ``wheelfarm_builds`` notice names its project and key), a job was queued
(``wheelfarm_jobs``).

Pages stay fast because each process keeps the build snapshots of the projects it serves (Snapshots) and
drops one only when a notice names its project; clients waiting on a build wake when a notice names its key;
idle builders and remote builders' long polls wake on a new job. After a lost notification connection every
snapshot is dropped and every waiter looks again: notices may have been missed meanwhile.
"""

from __future__ import annotations

import asyncio

import orjson
import psycopg
import structlog

from builder.jobs import BuildKey
from proxy.builds.snapshots import Snapshots
from proxy.cluster.queue import BUILDS_CHANNEL, JOBS_CHANNEL
from proxy.redact import redact

log = structlog.get_logger(__name__)

RECONNECT_SECONDS = 1.0
# Builders waiting for a job (this host's, remote ones' long polls) look again this often without a notice.
IDLE_POLL_SECONDS = 5.0


class Notices:
    def __init__(self, database_url: str) -> None:
        self._url = database_url
        self.snapshots = Snapshots()
        self._changed: dict[BuildKey, asyncio.Event] = {}
        self._new_job = asyncio.Event()  # replaced at each new-job notice, so no waiter clears another's

    def build_changed(self, project: str) -> None:
        """A build of ``project`` changed in this process (its own notice will follow, harmlessly)."""
        self.snapshots.changed(project)

    def watch(self, key: BuildKey) -> asyncio.Event:
        """An event set when a notice names ``key``: taken before looking at the build, so a notice between
        the look and the wait is not lost."""
        return self._changed.setdefault(key, asyncio.Event())

    def new_job(self) -> asyncio.Event:
        """An event set at the next new-job notice (take it before looking for a job, for the same reason)."""
        return self._new_job

    async def listen(self) -> None:
        """Until cancelled: follow the channels, and connect again whenever the connection is lost."""
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(self._url, autocommit=True) as conn:
                    await conn.execute(f"LISTEN {BUILDS_CHANNEL}")
                    await conn.execute(f"LISTEN {JOBS_CHANNEL}")
                    self._forget_everything()
                    async for notice in conn.notifies():
                        if notice.channel == JOBS_CHANNEL:
                            self._signal_job()
                        else:
                            self._notified(notice.payload)
            except psycopg.Error as exc:
                log.warning("cluster_notifications_lost", error=redact(str(exc)).strip()[:300])
            self._forget_everything()
            await asyncio.sleep(RECONNECT_SECONDS)

    def _signal_job(self) -> None:
        signal, self._new_job = self._new_job, asyncio.Event()
        signal.set()

    def _forget_everything(self) -> None:
        self.snapshots.forget_all()
        for event in self._changed.values():
            event.set()
        self._changed.clear()
        self._signal_job()

    def _notified(self, payload: str) -> None:
        try:
            data = orjson.loads(payload)
            project, key = str(data["project"]), str(data["key"])
        except (orjson.JSONDecodeError, KeyError, TypeError):
            return
        self.snapshots.changed(project)
        sha, _, target = key.partition("/")
        event = self._changed.pop(BuildKey(sha, target), None)
        if event is not None:
            event.set()
