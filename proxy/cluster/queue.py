"""The build queue and records in PostgreSQL: every statement the cluster runs on the ``builds`` table.

A job is claimed with ``SELECT ... FOR UPDATE SKIP LOCKED`` (builders never wait on each other's rows) and
held under a lease that its builder renews; a job whose lease expired goes back to the queue, up to
``MAX_ATTEMPTS`` times (a build that kills every builder that takes it must not do so for ever). A finished
build is recorded only by the builder that holds it. Every change is announced with ``NOTIFY`` on
``BUILDS_CHANNEL`` (payload: the project, for the processes' page caches, and the key, for waiting clients);
new jobs on ``JOBS_CHANNEL`` (wakes idle builders).
"""

from __future__ import annotations

import enum
import hashlib
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime

import orjson
import psycopg
from psycopg.rows import TupleRow
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool

from builder.jobs import BuildJob, BuildKey, BuildProgress, BuildRecord, BuildState, Phase, TargetOffer
from proxy.builds.service import BuilderView

BUILDS_CHANNEL = "wheelfarm_builds"
JOBS_CHANNEL = "wheelfarm_jobs"
MAX_ATTEMPTS = 3
CLAIM_WINDOW = 50  # queued jobs of a builder's platforms looked at per claim (patterns are checked here)

Pool = AsyncConnectionPool[psycopg.AsyncConnection[TupleRow]]
BlobDeleter = Callable[[str], Awaitable[object]]
BlobCheck = Callable[[str], Awaitable[bool]]


class Finished(enum.Enum):
    RECORDED = "recorded"
    LOST = "lost"  # the builder no longer holds the job
    MISSING = "missing"  # a blob it stored is gone: store again, finish again


def _offer(data: dict[str, object]) -> TargetOffer | None:
    """A builder's announced offer (None: a builder known only for being flagged, never announced)."""
    try:
        return TargetOffer(
            str(data["family"]), str(data["arch"]),
            tuple(int(p) for p in data["pythons"]),  # type: ignore[attr-defined]
            tuple(str(p) for p in data["patterns"]),  # type: ignore[attr-defined]
        )  # fmt: skip
    except (KeyError, TypeError, ValueError):
        return None


def _token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def _family(platform: str) -> str:
    return platform.split("_", 1)[0]


def notice(project: str, key: BuildKey, state: BuildState) -> str:
    return orjson.dumps({"project": project, "key": str(key), "state": state.value}).decode()


class BuildQueue:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool

    async def enqueue(self, job: BuildJob, now: float) -> BuildProgress | BuildRecord:
        """Queue ``job`` unless its key is queued, running or finished; a failed record is replaced (the
        caller asks only when that failure may be tried again). What the key is now."""
        target = job.target
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                """
                INSERT INTO builds (sdist_sha256, target, project, state, family, arch, python_minor, job,
                                    queued_at)
                VALUES (%s, %s, %s, 'queued', %s, %s, %s, %s, %s)
                ON CONFLICT (sdist_sha256, target) DO UPDATE
                    SET state = 'queued', job = excluded.job, queued_at = excluded.queued_at,
                        started_at = NULL, builder = NULL, lease_until = NULL, attempts = 0, record = NULL,
                        artifacts = '{}'
                    WHERE builds.state = 'failed'
                RETURNING 1
                """,
                (
                    job.sdist_sha256, target.id, job.project, _family(target.platform), target.arch,
                    target.python[1], Jsonb(orjson.loads(job.to_json())), now,
                ),
            )  # fmt: skip
            if await cursor.fetchone() is not None:
                await conn.execute("SELECT pg_notify(%s, %s)", (JOBS_CHANNEL, target.id))
                return BuildProgress(job, now)
            current = await self._state(conn, job.key)
        if current is None:  # deleted between the two statements: ask again
            return await self.enqueue(job, now)
        return current

    async def _state(
        self, conn: psycopg.AsyncConnection[TupleRow], key: BuildKey
    ) -> BuildProgress | BuildRecord | None:
        cursor = await conn.execute(
            "SELECT job, queued_at, started_at, record FROM builds WHERE sdist_sha256 = %s AND target = %s",
            (key.sdist_sha256, key.target),
        )
        row = await cursor.fetchone()
        if row is None:
            return None
        job, queued_at, started_at, record = row
        if record is not None:
            return BuildRecord.from_json(orjson.dumps(record))
        return BuildProgress(BuildJob.from_json(orjson.dumps(job)), queued_at, started_at)

    async def state(self, key: BuildKey) -> BuildProgress | BuildRecord | None:
        async with self.pool.connection() as conn:
            return await self._state(conn, key)

    async def claim(self, offer: TargetOffer, builder: str, lease: float, now: float) -> BuildJob | None:
        """The oldest queued job ``offer`` serves, now held by ``builder`` for ``lease`` seconds."""
        async with self.pool.connection() as conn, conn.transaction():
            # The candidates unlocked (a builder's patterns are checked here, not in SQL), then each one
            # locked on its own with SKIP LOCKED: locking the whole window would hide it from every other
            # builder until this one commits.
            cursor = await conn.execute(
                """
                SELECT sdist_sha256, target, job FROM builds
                WHERE state = 'queued' AND family = %s AND arch = %s AND python_minor = ANY(%s)
                ORDER BY queued_at LIMIT %s
                """,
                (offer.family, offer.arch, list(offer.pythons), CLAIM_WINDOW),
            )
            for sha, target, raw in await cursor.fetchall():
                job = BuildJob.from_json(orjson.dumps(raw))
                if not offer.serves(job.target):
                    continue
                locked = await conn.execute(
                    """
                    SELECT 1 FROM builds WHERE sdist_sha256 = %s AND target = %s AND state = 'queued'
                    FOR UPDATE SKIP LOCKED
                    """,
                    (sha, target),
                )
                if await locked.fetchone() is None:
                    continue  # another builder has it
                await conn.execute(
                    """
                    UPDATE builds SET state = 'running', builder = %s, started_at = %s,
                        lease_until = now() + make_interval(secs => %s), attempts = attempts + 1
                    WHERE sdist_sha256 = %s AND target = %s
                    """,
                    (builder, now, lease, sha, target),
                )
                running = notice(job.project, job.key, BuildState.RUNNING)
                await conn.execute("SELECT pg_notify(%s, %s)", (BUILDS_CHANNEL, running))
                return job
        return None

    async def renew(self, key: BuildKey, builder: str, lease: float, started_after: float = 0.0) -> bool:
        """Extend ``builder``'s lease on ``key``; False: it lost the job (its lease expired meanwhile), or
        it started before ``started_after`` (a build may not hold its job for ever by renewing)."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """
                UPDATE builds SET lease_until = now() + make_interval(secs => %s)
                WHERE sdist_sha256 = %s AND target = %s AND state = 'running' AND builder = %s
                    AND started_at > %s
                """,
                (lease, key.sdist_sha256, key.target, builder, started_after),
            )
            return cursor.rowcount == 1

    async def finish(
        self, record: BuildRecord, artifacts: list[str], builder: str, stored: BlobCheck
    ) -> Finished:
        """Record how ``builder``'s build of the key ended. LOST (nothing written) when it no longer holds
        the job; MISSING when a blob it stored was deleted meanwhile (forget() of another build that named
        the same blob, between the store and this lock): store it again and finish again."""
        key = record.key
        async with self.pool.connection() as conn, conn.transaction():
            for sha in sorted(artifacts):  # the same lock forget() takes before it deletes a blob
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (sha,))
            for sha in artifacts:
                if not await stored(sha):
                    return Finished.MISSING
            cursor = await conn.execute(
                """
                UPDATE builds SET state = %s, record = %s, artifacts = %s, lease_until = NULL
                WHERE sdist_sha256 = %s AND target = %s AND state = 'running' AND builder = %s
                """,
                (
                    record.state.value, Jsonb(orjson.loads(record.to_json())), artifacts,
                    key.sdist_sha256, key.target, builder,
                ),
            )  # fmt: skip
            if cursor.rowcount != 1:
                return Finished.LOST
            await conn.execute(
                "SELECT pg_notify(%s, %s)", (BUILDS_CHANNEL, notice(record.project, key, record.state))
            )
            return Finished.RECORDED

    async def held_by(self, builder: str) -> int:
        """How many jobs ``builder`` holds now."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT count(*) FROM builds WHERE state = 'running' AND builder = %s", (builder,)
            )
            row = await cursor.fetchone()
            return int(row[0]) if row else 0

    async def requeue_expired(self, now: float) -> list[BuildKey]:
        """Jobs whose lease expired go back to the queue; after ``MAX_ATTEMPTS`` they fail instead."""
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                """
                SELECT sdist_sha256, target, project, attempts, job, builder FROM builds
                WHERE state = 'running' AND lease_until < now()
                FOR UPDATE SKIP LOCKED
                """
            )
            expired = await cursor.fetchall()
            keys = []
            for sha, target, project, attempts, job, builder in expired:
                key = BuildKey(sha, target)
                keys.append(key)
                if attempts >= MAX_ATTEMPTS:
                    failed = abandoned(BuildJob.from_json(orjson.dumps(job)), attempts, builder, now)
                    await conn.execute(
                        "UPDATE builds SET state = 'failed', record = %s, lease_until = NULL"
                        " WHERE sdist_sha256 = %s AND target = %s",
                        (Jsonb(orjson.loads(failed.to_json())), sha, target),
                    )
                    state = BuildState.FAILED
                else:
                    await conn.execute(
                        "UPDATE builds SET state = 'queued', builder = NULL, started_at = NULL,"
                        " lease_until = NULL WHERE sdist_sha256 = %s AND target = %s",
                        (sha, target),
                    )
                    await conn.execute("SELECT pg_notify(%s, %s)", (JOBS_CHANNEL, target))
                    state = BuildState.QUEUED
                await conn.execute("SELECT pg_notify(%s, %s)", (BUILDS_CHANNEL, notice(project, key, state)))
            return keys

    async def announce(self, builder: str, offer: TargetOffer) -> None:
        """``builder`` is alive and builds what ``offer`` says (called again as its heartbeat)."""
        data = {"family": offer.family, "arch": offer.arch, "pythons": list(offer.pythons),
                "patterns": list(offer.patterns)}  # fmt: skip
        async with self.pool.connection() as conn:
            await conn.execute(
                """
                INSERT INTO builders (id, offer) VALUES (%s, %s)
                ON CONFLICT (id) DO UPDATE SET offer = excluded.offer, last_seen = now()
                """,
                (builder, Jsonb(data)),
            )

    async def add_token(self, name: str) -> str:
        """A new builder token named ``name`` (shown once: only its sha256 is kept)."""
        token = "wfb_" + secrets.token_urlsafe(32)
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO builder_tokens (name, token_sha256) VALUES (%s, %s)",
                (name, _token_sha256(token)),
            )
        return token

    async def revoke_token(self, name: str) -> bool:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE builder_tokens SET revoked_at = now() WHERE name = %s AND revoked_at IS NULL", (name,)
            )
            return cursor.rowcount == 1

    async def tokens(self) -> list[tuple[str, datetime, datetime | None]]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT name, created_at, revoked_at FROM builder_tokens ORDER BY name"
            )
            return [(name, created, revoked) for name, created, revoked in await cursor.fetchall()]

    async def builder_of_token(self, token: str) -> str | None:
        """The name of the builder that holds ``token``, unless it was revoked (or never existed)."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT name FROM builder_tokens WHERE token_sha256 = %s AND revoked_at IS NULL",
                (_token_sha256(token),),
            )
            row = await cursor.fetchone()
            return str(row[0]) if row else None

    async def flag(self, builder: str, reason: str) -> None:
        """``builder`` sent something the farm refused: it gets no more jobs until the operator clears it."""
        async with self.pool.connection() as conn:
            await conn.execute(
                """
                INSERT INTO builders (id, offer, flagged_reason, flagged_at) VALUES (%s, '{}', %s, now())
                ON CONFLICT (id) DO UPDATE SET flagged_reason = excluded.flagged_reason, flagged_at = now()
                """,
                (builder, reason),
            )

    async def unflag(self, builder: str) -> bool:
        """The operator cleared ``builder`` (after looking at why it was flagged): it gets jobs again."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE builders SET flagged_reason = NULL, flagged_at = NULL"
                " WHERE id = %s AND flagged_reason IS NOT NULL",
                (builder,),
            )
            return cursor.rowcount == 1

    async def flagged(self, builder: str) -> str | None:
        async with self.pool.connection() as conn:
            cursor = await conn.execute("SELECT flagged_reason FROM builders WHERE id = %s", (builder,))
            row = await cursor.fetchone()
            return str(row[0]) if row and row[0] is not None else None

    async def release(self, key: BuildKey, builder: str, now: float) -> bool:
        """Put ``builder``'s job back in the queue at once (its result was refused), or, after
        ``MAX_ATTEMPTS`` builders, fail it: a job that gets every builder refused must not go round for
        ever."""
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                """
                SELECT attempts, job FROM builds
                WHERE sdist_sha256 = %s AND target = %s AND state = 'running' AND builder = %s FOR UPDATE
                """,
                (key.sdist_sha256, key.target, builder),
            )
            row = await cursor.fetchone()
            if row is None:
                return False
            attempts, job = row
            if attempts >= MAX_ATTEMPTS:
                failed = abandoned(BuildJob.from_json(orjson.dumps(job)), attempts, builder, now)
                await conn.execute(
                    "UPDATE builds SET state = 'failed', record = %s, lease_until = NULL"
                    " WHERE sdist_sha256 = %s AND target = %s",
                    (Jsonb(orjson.loads(failed.to_json())), key.sdist_sha256, key.target),
                )
                failure = notice(failed.project, key, BuildState.FAILED)
                await conn.execute("SELECT pg_notify(%s, %s)", (BUILDS_CHANNEL, failure))
                return True
            await conn.execute(
                "UPDATE builds SET state = 'queued', builder = NULL, started_at = NULL, lease_until = NULL"
                " WHERE sdist_sha256 = %s AND target = %s",
                (key.sdist_sha256, key.target),
            )
            await conn.execute("SELECT pg_notify(%s, %s)", (JOBS_CHANNEL, key.target))
            return True

    async def holds(self, key: BuildKey, builder: str) -> BuildJob | None:
        """The job of ``key`` if ``builder`` holds it now."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT job FROM builds WHERE sdist_sha256 = %s AND target = %s AND state = 'running'"
                " AND builder = %s",
                (key.sdist_sha256, key.target, builder),
            )
            row = await cursor.fetchone()
            return BuildJob.from_json(orjson.dumps(row[0])) if row else None

    async def builders(self, within: float) -> list[BuilderView]:
        """Every builder the cluster has heard of: what it builds, when it was last heard from, whether it is
        live (within ``within`` seconds) or flagged, and the jobs it holds."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """
                SELECT b.id, b.offer, extract(epoch FROM b.last_seen),
                       b.last_seen > now() - make_interval(secs => %s), b.flagged_reason,
                       coalesce(array_agg(j.project || ' for ' || j.target)
                                FILTER (WHERE j.project IS NOT NULL), '{}')
                FROM builders b LEFT JOIN builds j ON j.builder = b.id AND j.state = 'running'
                GROUP BY b.id ORDER BY b.id
                """,
                (within,),
            )
            return [
                BuilderView(
                    id=str(builder),
                    offer=_offer(offer),
                    live=bool(live) and flagged is None,
                    last_seen=float(seen),
                    flagged=flagged or "",
                    jobs=tuple(jobs),
                )
                for builder, offer, seen, live, flagged, jobs in await cursor.fetchall()
            ]

    async def live_offers(self, within: float) -> list[tuple[str, TargetOffer]]:
        """The builders heard from in the last ``within`` seconds, and what each builds."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT id, offer FROM builders WHERE last_seen > now() - make_interval(secs => %s)"
                " AND flagged_reason IS NULL AND offer ? 'family' ORDER BY id",
                (within,),
            )
            return [(builder, offer) for builder, o in await cursor.fetchall() if (offer := _offer(o))]

    async def records(self, project: str | None = None) -> list[BuildRecord]:
        async with self.pool.connection() as conn:
            if project is None:
                cursor = await conn.execute("SELECT record FROM builds WHERE record IS NOT NULL")
            else:
                cursor = await conn.execute(
                    "SELECT record FROM builds WHERE project = %s AND record IS NOT NULL", (project,)
                )
            return [BuildRecord.from_json(orjson.dumps(row[0])) for row in await cursor.fetchall()]

    async def by_wheel(self, sha256: str, *, metadata: bool = False) -> BuildRecord | None:
        field = "metadata_sha256" if metadata else "wheel_sha256"  # one of two constants, never input
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                f"SELECT record FROM builds WHERE state = 'done' AND record->>'{field}' = %s LIMIT 1",
                (sha256,),
            )
            row = await cursor.fetchone()
            return BuildRecord.from_json(orjson.dumps(row[0])) if row is not None else None

    async def active(self) -> list[BuildProgress]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT job, queued_at, started_at FROM builds WHERE state IN ('queued', 'running')"
                " ORDER BY queued_at"
            )
            return [
                BuildProgress(BuildJob.from_json(orjson.dumps(job)), queued_at, started_at)
                for job, queued_at, started_at in await cursor.fetchall()
            ]

    async def counts(self) -> dict[str, int]:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """
                SELECT
                    count(*) FILTER (WHERE state = 'queued'),
                    count(*) FILTER (WHERE state = 'running'),
                    count(*) FILTER (WHERE state = 'done'),
                    count(*) FILTER (WHERE state = 'failed'),
                    count(*) FILTER (WHERE record->>'orphaned_since' IS NOT NULL),
                    coalesce(sum((record->>'wheel_size')::bigint) FILTER (WHERE state = 'done'), 0),
                    count(*) FILTER (WHERE state = 'done' AND record->>'reproduced' = 'true'),
                    count(*) FILTER (WHERE state = 'done' AND record->>'reproduced' = 'false')
                FROM builds
                """
            )
            row = await cursor.fetchone()
            assert row is not None
            names = (
                "queued",
                "running",
                "done",
                "failed",
                "orphaned",
                "built_bytes",
                "reproduced",
                "not_reproduced",
            )
            return {name: int(value) for name, value in zip(names, row, strict=True)}

    async def set_orphaned(self, project: str, listed: frozenset[str], now: float) -> int:
        """Mark the finished builds of ``project`` whose sdist upstream no longer lists (since ``now``),
        unmark those it lists again; how many changed."""
        async with self.pool.connection() as conn, conn.transaction():
            gone = await conn.execute(
                """
                UPDATE builds
                SET record = jsonb_set(record, '{orphaned_since}', to_jsonb(%s::double precision))
                WHERE project = %s AND record IS NOT NULL AND NOT (sdist_sha256 = ANY(%s))
                    AND record->>'orphaned_since' IS NULL
                """,
                (now, project, list(listed)),
            )
            back = await conn.execute(
                """
                UPDATE builds SET record = jsonb_set(record, '{orphaned_since}', 'null'::jsonb)
                WHERE project = %s AND record IS NOT NULL AND sdist_sha256 = ANY(%s)
                    AND record->>'orphaned_since' IS NOT NULL
                """,
                (project, list(listed)),
            )
            changed = gone.rowcount + back.rowcount
            if changed:
                orphans = orjson.dumps({"project": project, "key": "", "state": "orphans"}).decode()
                await conn.execute("SELECT pg_notify(%s, %s)", (BUILDS_CHANNEL, orphans))
            return changed

    async def forget(self, key: BuildKey, delete_blob: BlobDeleter) -> BuildRecord | None:
        """Delete the finished build of ``key`` and, under the same lock ``finish`` takes, the blobs no
        other row names (``delete_blob`` runs inside the transaction: no new row can name one meanwhile)."""
        async with self.pool.connection() as conn, conn.transaction():
            cursor = await conn.execute(
                "DELETE FROM builds WHERE sdist_sha256 = %s AND target = %s AND record IS NOT NULL"
                " RETURNING record, artifacts",
                (key.sdist_sha256, key.target),
            )
            row = await cursor.fetchone()
            if row is None:
                return None
            record = BuildRecord.from_json(orjson.dumps(row[0]))
            for sha in sorted(row[1]):
                await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (sha,))
                named = await conn.execute(
                    "SELECT 1 FROM builds WHERE artifacts @> ARRAY[%s]::text[] LIMIT 1", (sha,)
                )
                if await named.fetchone() is None:
                    await delete_blob(sha)
            await conn.execute(
                "SELECT pg_notify(%s, %s)", (BUILDS_CHANNEL, notice(record.project, key, record.state))
            )
            return record

    async def delete_if_unnamed(self, sha: str, delete_blob: BlobDeleter) -> bool:
        """Delete blob ``sha`` unless a build names it (under the lock finish() and forget() take)."""
        async with self.pool.connection() as conn, conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (sha,))
            named = await conn.execute(
                "SELECT 1 FROM builds WHERE artifacts @> ARRAY[%s]::text[] LIMIT 1", (sha,)
            )
            if await named.fetchone() is not None:
                return False
            await delete_blob(sha)
            return True

    async def oldest_finished(self, excess: int) -> list[BuildKey]:
        """The ``excess`` finished builds to prune first: orphans, then the oldest."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                """
                SELECT sdist_sha256, target FROM builds WHERE record IS NOT NULL
                ORDER BY (record->>'orphaned_since') IS NULL, (record->>'finished_at')::double precision
                LIMIT %s
                """,
                (excess,),
            )
            return [BuildKey(sha, target) for sha, target in await cursor.fetchall()]


def abandoned(job: BuildJob, attempts: int, builder: str | None, now: float) -> BuildRecord:
    return BuildRecord(
        key=job.key,
        state=BuildState.FAILED,
        project=job.project,
        version=job.version,
        sdist_filename=job.sdist_filename,
        started_at=now,
        finished_at=now,
        error=f"the build was taken {attempts} times and no builder finished it (lost, or its result was "
        f"refused; last: {builder or '?'})",
        phase=Phase.INTERNAL,
        builder=builder or "",
    )
