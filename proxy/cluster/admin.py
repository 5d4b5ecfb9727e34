"""What ``wheelfarm db`` does: the schema, and remote builders' tokens (the operator's, with database access;
a builder never has it)."""

from __future__ import annotations

import psycopg
from psycopg_pool import AsyncConnectionPool

from proxy.cluster.queue import BuildQueue, Pool
from proxy.cluster.schema import upgrade_database


async def database_command(url: str, command: str, name: str) -> tuple[int, str]:
    """(exit status, what to print) for ``wheelfarm db COMMAND [NAME]``."""
    before, after = await upgrade_database(url)
    if command == "upgrade":
        return (
            0,
            f"schema version {before} -> {after}"
            if after != before
            else f"schema version {after}: up to date",
        )
    pool: Pool = AsyncConnectionPool(url, min_size=1, max_size=1, open=False, kwargs={"autocommit": True})
    async with pool:
        queue = BuildQueue(pool)
        if command == "add-token":
            try:
                token = await queue.add_token(name)
            except psycopg.errors.CheckViolation:
                return 2, f"{name!r} is not a builder name: letters, digits, '.', '_', '-', at most 64"
            if token is None:
                return 1, f"the builder {name!r} has a live token already (revoke-token it first)"
            return 0, token
        if command == "unflag":
            if await queue.unflag(name):
                return 0, f"{name} gets jobs again"
            return 1, f"no flagged builder named {name!r}"
        if command == "revoke-token":
            if await queue.revoke_token(name):
                return 0, f"revoked the token of {name}"
            return 1, f"no live token named {name!r}"
        lines = [
            f"{token_name}\tcreated {created:%Y-%m-%d %H:%M}\t"
            + (f"revoked {revoked:%Y-%m-%d %H:%M}" if revoked else "live")
            for token_name, created, revoked in await queue.tokens()
        ]
        return 0, "\n".join(lines) or "no builder tokens"
