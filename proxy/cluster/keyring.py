"""The cluster's keyring: the public keys every process of the cluster signs with, in PostgreSQL.

Each host keeps its private key in its own cache folder (or every host is given the same
``[provenance] key_file``); a wheel may be signed by any of them and then served by any process, so each
process publishes, at start, the public keys of its keyring (proxy/provenance/keys.py: current and retired,
with their dates) and ``/.well-known/wheelfarm/keys.json`` serves them all. Only public keys are written
here; a key retired on one host (``wheelfarm keys rotate``) is marked so when that host starts again.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import structlog
from psycopg.types.json import Jsonb

from proxy.cluster.queue import Pool
from proxy.provenance.keys import FarmKeys, KnownKey

log = structlog.get_logger(__name__)


CACHE_SECONDS = 10.0  # keys.json is public: read from the database at most this often per process


class ClusterKeyring:
    def __init__(self, pool: Pool) -> None:
        self.pool = pool
        self._cached: tuple[float, dict[str, Any]] | None = None

    async def publish(self, keys: FarmKeys) -> None:
        """Add this process's public keys; a key retired here stays retired (the earliest retirement)."""
        async with self.pool.connection() as conn, conn.transaction():
            for known in keys.known:
                await conn.execute(
                    """
                    INSERT INTO signing_keys (keyid, key, created_at, retired_at) VALUES (%s, %s, %s, %s)
                    ON CONFLICT (keyid) DO UPDATE SET
                        retired_at = CASE WHEN signing_keys.retired_at IS NULL THEN excluded.retired_at
                                          ELSE least(signing_keys.retired_at, excluded.retired_at) END,
                        created_at = least(signing_keys.created_at, excluded.created_at)
                    """,
                    (known.key.keyid, Jsonb(known.to_json()), known.created, known.retired),
                )

    async def published(self, keys: FarmKeys) -> dict[str, Any]:
        """keys.json for the whole cluster: this process's current key id, and every key any process
        published (with this process's own, should the database have lost them)."""
        now = time.monotonic()
        if self._cached is not None and now - self._cached[0] < CACHE_SECONDS:
            return self._cached[1]
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT key, created_at, retired_at FROM signing_keys ORDER BY created_at, keyid"
            )
            rows = await cursor.fetchall()
        found: dict[str, KnownKey] = {}
        for data, created, retired in rows:
            try:
                known = KnownKey.from_json({**data, "created": created, "retired": retired})
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("signing_key_unreadable", error=str(exc), key=orjson.dumps(data).decode()[:200])
                continue
            found[known.key.keyid] = known
        for known in keys.known:
            found.setdefault(known.key.keyid, known)
        published = {"current": keys.keyid, "keys": [known.to_json() for known in found.values()]}
        self._cached = (now, published)
        return published
