"""The cluster's PostgreSQL schema, as numbered migrations applied in order at start (or by
``wheelfarm db upgrade``), each in its own transaction, under an advisory lock so that several processes
starting at once apply each migration exactly once.

``builds`` is both the queue and the records: one row per build key (sdist sha256, target), from queued
through running (held by a builder under a lease) to done or failed (the BuildRecord as JSON, and the
sha256 of every artifact it names in the shared blob store, so a blob is deleted only when no row names it).
"""

from __future__ import annotations

import psycopg
from psycopg.rows import TupleRow

# Any fixed number: the advisory lock every process takes while it migrates.
MIGRATION_LOCK = 0x77686C66  # "whlf"

MIGRATIONS: tuple[str, ...] = (
    # 1: the build queue and records
    """
    CREATE TABLE builds (
        sdist_sha256 text NOT NULL CHECK (sdist_sha256 ~ '^[0-9a-f]{64}$'),
        target text NOT NULL,
        project text NOT NULL,
        state text NOT NULL CHECK (state IN ('queued', 'running', 'done', 'failed')),
        family text NOT NULL,          -- the target's platform family (manylinux, musllinux) ...
        arch text NOT NULL,            -- ... architecture ...
        python_minor integer NOT NULL, -- ... and CPython 3 minor version: what a builder announces
        job jsonb NOT NULL,
        queued_at double precision NOT NULL,
        started_at double precision,
        builder text,                  -- who holds the job (running) or made the record (done, failed)
        lease_until timestamptz,
        attempts integer NOT NULL DEFAULT 0,
        record jsonb,
        artifacts text[] NOT NULL DEFAULT '{}',
        PRIMARY KEY (sdist_sha256, target)
    );
    CREATE INDEX builds_queued ON builds (family, arch, python_minor, queued_at) WHERE state = 'queued';
    CREATE INDEX builds_leases ON builds (lease_until) WHERE state = 'running';
    CREATE INDEX builds_project ON builds (project);
    CREATE INDEX builds_artifacts ON builds USING gin (artifacts);
    CREATE TABLE builders (
        id text PRIMARY KEY,
        offer jsonb NOT NULL,          -- the TargetOffer it announced
        started_at timestamptz NOT NULL DEFAULT now(),
        last_seen timestamptz NOT NULL DEFAULT now()
    );
    """,
    # 2: remote builders: their tokens (only a token's sha256 is kept), and builders flagged for a bad upload
    """
    CREATE TABLE builder_tokens (
        name text PRIMARY KEY CHECK (name ~ '^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$'),
        token_sha256 text NOT NULL UNIQUE,
        created_at timestamptz NOT NULL DEFAULT now(),
        revoked_at timestamptz
    );
    ALTER TABLE builders ADD COLUMN flagged_reason text;
    ALTER TABLE builders ADD COLUMN flagged_at timestamptz;
    """,
    # 3: second builds (reproducibility verdicts, proxy/cluster/seconds.py), and the farm's public signing
    # keys, so that every process publishes every key any process signed with (proxy/cluster/keyring.py)
    """
    CREATE TABLE second_builds (
        sdist_sha256 text NOT NULL,
        target text NOT NULL,
        family text NOT NULL,
        arch text NOT NULL,
        python_minor integer NOT NULL,
        job jsonb NOT NULL,
        first_builder text NOT NULL,   -- made the wheel: takes its second build only when no other can
        wheel_sha256 text NOT NULL,    -- the wheel the second build is compared with
        queued_at double precision NOT NULL,
        builder text,                  -- who holds it now (NULL: queued) ...
        started_at double precision,   -- ... since when
        lease_until timestamptz,
        attempts integer NOT NULL DEFAULT 0,
        PRIMARY KEY (sdist_sha256, target),
        FOREIGN KEY (sdist_sha256, target) REFERENCES builds ON DELETE CASCADE
    );
    CREATE INDEX second_builds_queued ON second_builds (family, arch, python_minor, queued_at)
        WHERE builder IS NULL;
    CREATE TABLE signing_keys (
        keyid text PRIMARY KEY CHECK (keyid ~ '^[0-9a-f]{64}$'),
        key jsonb NOT NULL,            -- the public key as keys.json publishes it (no private part, ever)
        created_at double precision NOT NULL,
        retired_at double precision
    );
    """,
)


async def schema_version(conn: psycopg.AsyncConnection[TupleRow]) -> int:
    """The newest migration applied (0: none)."""
    exists = await (await conn.execute("SELECT to_regclass('wheelfarm_schema') IS NOT NULL")).fetchone()
    if not exists or not exists[0]:
        return 0
    row = await (await conn.execute("SELECT coalesce(max(version), 0) FROM wheelfarm_schema")).fetchone()
    return int(row[0]) if row else 0


async def upgrade(conn: psycopg.AsyncConnection[TupleRow]) -> tuple[int, int]:
    """Apply the migrations this database lacks; (version before, version after). ``conn`` must be in
    autocommit mode (each migration is its own transaction)."""
    await conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATION_LOCK,))
    try:
        await conn.execute(
            "CREATE TABLE IF NOT EXISTS wheelfarm_schema ("
            " version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
        )
        before = await schema_version(conn)
        if before > len(MIGRATIONS):
            raise SchemaTooNew(before)
        for version, statements in enumerate(MIGRATIONS[before:], start=before + 1):
            async with conn.transaction():
                await conn.execute(statements.encode())
                await conn.execute("INSERT INTO wheelfarm_schema (version) VALUES (%s)", (version,))
        return before, len(MIGRATIONS)
    finally:
        await conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATION_LOCK,))


class SchemaTooNew(RuntimeError):
    def __init__(self, version: int) -> None:
        super().__init__(
            f"the cluster database has schema version {version}, newer than this wheelfarm knows "
            f"({len(MIGRATIONS)}): upgrade wheelfarm on this host"
        )


async def upgrade_database(url: str) -> tuple[int, int]:
    """Connect to the cluster's database and bring its schema up to date; (version before, after)."""
    async with await psycopg.AsyncConnection.connect(url, autocommit=True) as conn:
        return await upgrade(conn)
