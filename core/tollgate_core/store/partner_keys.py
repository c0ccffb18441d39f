"""Partner API keys: PostgreSQL keeps the SHA-256 digest of each key, never the key.

Authenticating happens before the tenant is known, so the lookup runs in a transaction that
sets `tollgate.api_key_digest` instead of `tollgate.tenant`: row-level security then shows the
one row whose digest it is (policy `key_lookup`, migration 0004) and nothing else.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from tollgate_core.domain.care import api_key_digest, new_api_key
from tollgate_core.store.db import Pool, tenant_tx

_DIGEST = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True, slots=True)
class KeyOwner:
    tenant: str
    agreement: str


async def register(pool: Pool, tenant: str, agreement: str, key: str) -> None:
    """Accept `key` for the agreement (idempotent: the operator calls it at every reconcile)."""
    async with tenant_tx(pool, tenant) as conn:
        await conn.execute(
            "INSERT INTO partner_api_keys (tenant_id, agreement, key_digest) VALUES ($1, $2, $3)"
            " ON CONFLICT DO NOTHING", tenant, agreement, api_key_digest(key))


async def issue_missing(pool: Pool, tenant: str, agreements: Iterable[str]) -> dict[str, str]:
    """Local mode: a new key for each agreement without a live one; the keys are returned
    once and only their digests are stored."""
    issued: dict[str, str] = {}
    async with tenant_tx(pool, tenant) as conn:
        rows = await conn.fetch(
            "SELECT DISTINCT agreement FROM partner_api_keys WHERE revoked_at IS NULL")
        have = {r["agreement"] for r in rows}
        for agreement in sorted(set(agreements) - have):
            key = new_api_key()
            await conn.execute(
                "INSERT INTO partner_api_keys (tenant_id, agreement, key_digest)"
                " VALUES ($1, $2, $3)", tenant, agreement, api_key_digest(key))
            issued[agreement] = key
    return issued


async def authenticate(pool: Pool, digest: str) -> KeyOwner | None:
    """The tenant and agreement of a live key with this digest, or None."""
    if not _DIGEST.match(digest):
        return None
    async with pool.acquire() as conn, conn.transaction(readonly=True):
        await conn.execute("SELECT set_config('tollgate.api_key_digest', $1, true)", digest)
        row = await conn.fetchrow(
            "SELECT tenant_id, agreement FROM partner_api_keys"
            " WHERE key_digest = $1 AND revoked_at IS NULL", digest)
    return None if row is None else KeyOwner(row["tenant_id"], row["agreement"])
