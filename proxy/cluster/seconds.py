"""The cluster's second builds: every wheel the cluster built is built again, independently, for its
reproducibility verdict (proxy/builds/judge.py). Every statement on the ``second_builds`` table.

A second build goes to another builder than the one that made the wheel (another machine: a cluster
process's builder restarted is the same one), when a live one builds its target; only when none does may
the first builder build it again itself (in a fresh work folder, as the
embedded pool does). A builder takes second builds only when no first build is queued for it (a quiet
moment), one at a time, under a lease like a first build's. The row is deleted with its build (foreign key),
and whenever the verdict is recorded; a second build no builder finishes after ``MAX_ATTEMPTS`` tries is
dropped (the wheel stays unjudged until the next start queues it again: it is the hosts' trouble, not the
package's).
"""

from __future__ import annotations

import time

import orjson
import psycopg
import structlog
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb

from builder.jobs import BuildJob, BuildKey, BuildRecord, TargetOffer
from proxy.builds.judge import verdict_json
from proxy.cluster.queue import (
    BUILDS_CHANNEL,
    CLAIM_WINDOW,
    JOBS_CHANNEL,
    MAX_ATTEMPTS,
    BlobCheck,
    Pool,
    notice,
)

log = structlog.get_logger(__name__)

# Every served wheel not judged yet and not queued for it (or only ``key``'s), its first builder named.
_QUEUE_UNJUDGED = """
    INSERT INTO second_builds (sdist_sha256, target, family, arch, python_minor, job, first_builder,
                               wheel_sha256, queued_at)
    SELECT sdist_sha256, target, family, arch, python_minor, job,
           coalesce(record->>'made_by', builder, ''), record->>'wheel_sha256', %(now)s
    FROM builds
    WHERE state = 'done' AND coalesce(record->>'wheel_sha256', '') <> ''
        AND jsonb_typeof(record->'reproduced') IS DISTINCT FROM 'boolean'
        AND (%(sha)s::text IS NULL OR (sdist_sha256 = %(sha)s AND target = %(target)s))
    ON CONFLICT DO NOTHING
    RETURNING target
"""


def same_machine(builder: str) -> str:
    """What a builder id says of its machine: a cluster process's builder is ``host:pid`` (a new id after
    each restart, the same machine), a remote builder is its token's name (no colon)."""
    return builder.rsplit(":", 1)[0]


class SecondBuilds:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def queue_unjudged(self, now: float, key: BuildKey | None = None) -> int:
        """Queue the second build of ``key`` (None: of every served wheel without a verdict, as at start:
        those a restart interrupted, or built before there were second builds). How many were queued."""
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                _QUEUE_UNJUDGED,
                {"now": now, "sha": key and key.sdist_sha256, "target": key and key.target},
            )
            return await _wake_builders(conn, cursor)

    async def claim(
        self, offer: TargetOffer, builder: str, lease: float, others: list[tuple[str, TargetOffer]]
    ) -> BuildJob | None:
        """The oldest second build ``offer`` serves that ``builder`` may take (``others``: the live builders
        and their offers), now held by it for ``lease`` seconds; None when it holds one already."""
        async with self.pool.connection() as conn, conn.transaction():
            # One claim of a builder's at a time (its concurrent long polls wake together): the check that
            # it holds none yet and the claim are one step, or each poll would take a second build.
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", ("second builds of " + builder,))
            cursor = await conn.execute(
                """
                SELECT sdist_sha256, target, job, first_builder FROM second_builds
                WHERE builder IS NULL AND family = %s AND arch = %s AND python_minor = ANY(%s)
                    AND NOT EXISTS (SELECT 1 FROM second_builds WHERE builder = %s)
                ORDER BY queued_at LIMIT %s
                """,
                (offer.family, offer.arch, list(offer.pythons), builder, CLAIM_WINDOW),
            )
            for sha, target, raw, first_builder in await cursor.fetchall():
                job = BuildJob.from_json(orjson.dumps(raw))
                if not offer.serves(job.target):
                    continue
                machine = same_machine(first_builder)
                if machine == same_machine(builder) and any(
                    same_machine(other) != machine and theirs.serves(job.target) for other, theirs in others
                ):
                    continue  # another machine can make it: the second build must be independent
                locked = await conn.execute(
                    "SELECT 1 FROM second_builds WHERE sdist_sha256 = %s AND target = %s AND builder IS NULL"
                    " FOR UPDATE SKIP LOCKED",
                    (sha, target),
                )
                if await locked.fetchone() is None:
                    continue
                await conn.execute(
                    """
                    UPDATE second_builds SET builder = %s, attempts = attempts + 1, started_at = %s,
                        lease_until = now() + make_interval(secs => %s)
                    WHERE sdist_sha256 = %s AND target = %s
                    """,
                    (builder, time.time(), lease, sha, target),
                )
                return job
        return None

    async def holds(self, key: BuildKey, builder: str) -> tuple[BuildJob, str] | None:
        """The second build of ``key`` and the sha256 of the wheel it is to be compared with, if ``builder``
        holds it now."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT job, wheel_sha256 FROM second_builds WHERE sdist_sha256 = %s AND target = %s"
                " AND builder = %s",
                (key.sdist_sha256, key.target, builder),
            )
            row = await cursor.fetchone()
            return (BuildJob.from_json(orjson.dumps(row[0])), str(row[1])) if row else None

    async def renew(self, key: BuildKey, builder: str, lease: float, started_after: float = 0.0) -> bool:
        """As BuildQueue.renew: False once ``builder`` lost it, or when it started before ``started_after``
        (a builder may not hold a second build for ever, and with it its verdict, by renewing)."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE second_builds SET lease_until = now() + make_interval(secs => %s)"
                " WHERE sdist_sha256 = %s AND target = %s AND builder = %s AND started_at > %s",
                (lease, key.sdist_sha256, key.target, builder, started_after),
            )
            return cursor.rowcount == 1

    async def release(self, key: BuildKey, builder: str) -> None:
        """``builder`` could not make the second build (its host's trouble): another may."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM second_builds WHERE sdist_sha256 = %s AND target = %s AND builder = %s"
                " AND attempts >= %s",
                (key.sdist_sha256, key.target, builder, MAX_ATTEMPTS),
            )
            await conn.execute(
                "UPDATE second_builds SET builder = NULL, started_at = NULL, lease_until = NULL"
                " WHERE sdist_sha256 = %s AND target = %s AND builder = %s",
                (key.sdist_sha256, key.target, builder),
            )
            await conn.execute("SELECT pg_notify(%s, %s)", (JOBS_CHANNEL, key.target))

    async def drop(self, key: BuildKey, builder: str) -> None:
        """``builder``'s second build has nothing left to judge (the build was forgotten or built anew)."""
        async with self.pool.connection() as conn:
            await conn.execute(
                "DELETE FROM second_builds WHERE sdist_sha256 = %s AND target = %s AND builder = %s",
                (key.sdist_sha256, key.target, builder),
            )

    async def requeue_expired(self) -> int:
        """Second builds whose lease expired go back to the queue (dropped after ``MAX_ATTEMPTS``)."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute(
                "DELETE FROM second_builds WHERE lease_until < now() AND attempts >= %s", (MAX_ATTEMPTS,)
            )
            cursor = await conn.execute(
                "UPDATE second_builds SET builder = NULL, started_at = NULL, lease_until = NULL"
                " WHERE lease_until < now()"
                " RETURNING target"
            )
            return await _wake_builders(conn, cursor)

    async def record_verdict(
        self, judged: BuildRecord, signed: list[str], builder: str, stored: BlobCheck
    ) -> bool:
        """Write ``judged``'s verdict and new signature (the blobs ``signed``) into the record, as it is then
        (judge.VERDICT_FIELDS only: an orphan mark made meanwhile stays), if ``builder`` still holds the
        second build and the record still serves the wheel it was compared with; the second build's row
        goes either way. False: nothing recorded (the caller drops the blobs it stored)."""
        artifacts = signed
        key = judged.key
        async with self.pool.connection() as conn, conn.transaction():
            for sha in sorted(artifacts):  # the lock forget() takes before it deletes a blob
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (sha,))
            held = await conn.execute(
                "DELETE FROM second_builds WHERE sdist_sha256 = %s AND target = %s AND builder = %s"
                " AND wheel_sha256 = %s RETURNING 1",
                (key.sdist_sha256, key.target, builder, judged.wheel_sha256),
            )
            if await held.fetchone() is None:
                return False
            for sha in artifacts:
                if not await stored(sha):
                    return False
            # The old signature's blobs leave the row's artifacts (SET reads the row as it was), the new ones
            # join them.
            cursor = await conn.execute(
                """
                UPDATE builds SET
                    record = record || %s,
                    artifacts = array(
                        SELECT DISTINCT sha FROM unnest(
                            array_remove(array_remove(artifacts, record->>'attestation_sha256'),
                                         record->>'pep740_sha256') || %s::text[]
                        ) AS sha ORDER BY sha)
                WHERE sdist_sha256 = %s AND target = %s AND state = 'done' AND record->>'wheel_sha256' = %s
                """,
                (
                    Jsonb(verdict_json(judged)), artifacts,
                    key.sdist_sha256, key.target, judged.wheel_sha256,
                ),
            )  # fmt: skip
            if cursor.rowcount != 1:
                return False
            await conn.execute(
                "SELECT pg_notify(%s, %s)", (BUILDS_CHANNEL, notice(judged.project, key, judged.state))
            )
            return True

    async def pending(self) -> int:
        async with self.pool.connection() as conn:
            row = await (await conn.execute("SELECT count(*) FROM second_builds")).fetchone()
            return int(row[0]) if row else 0


async def _wake_builders(
    conn: psycopg.AsyncConnection[TupleRow], queued: psycopg.AsyncCursor[TupleRow]
) -> int:
    """Tell idle builders that second builds for the targets ``queued`` returned are waiting (one notice
    per target, as new first builds do); how many rows it returned."""
    rows = await queued.fetchall()
    for target in sorted({str(row[0]) for row in rows}):
        await conn.execute("SELECT pg_notify(%s, %s)", (JOBS_CHANNEL, target))
    return len(rows)
