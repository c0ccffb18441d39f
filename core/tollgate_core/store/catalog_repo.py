"""Tenants and catalog revisions in PostgreSQL."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from tollgate_core.domain.catalog import CatalogSource
from tollgate_core.domain.events import DomainEvent
from tollgate_core.domain.ledger import (
    PAYMENT_FUNDING_ACCOUNT,
    TOP_UP_FUNDING_ACCOUNT,
    AccountKind,
    revenue_account,
)
from tollgate_core.resources.tenant import TenantSpec
from tollgate_core.store import outbox
from tollgate_core.store.db import Connection

# System accounts every tenant has from the start (account id, kind).
SYSTEM_ACCOUNTS: tuple[tuple[str, AccountKind], ...] = (
    (TOP_UP_FUNDING_ACCOUNT, AccountKind.FUNDING),
    (revenue_account("usage"), AccountKind.REVENUE),
    (revenue_account("recurring"), AccountKind.REVENUE),
    (revenue_account("oneTime"), AccountKind.REVENUE),
    (revenue_account("rounding"), AccountKind.REVENUE),
    (revenue_account("adjustments"), AccountKind.REVENUE),
    (PAYMENT_FUNDING_ACCOUNT, AccountKind.FUNDING),
    ("tax:payable", AccountKind.TAX_PAYABLE),
    ("promotion:expense", AccountKind.PROMOTION_EXPENSE),
)


@dataclass(frozen=True, slots=True)
class StoredRevision:
    revision: int
    digest: str
    published_at: datetime
    source: CatalogSource


async def upsert_tenant(conn: Connection, tenant: str, spec: TenantSpec) -> None:
    """Create or update a tenant and its system ledger accounts (idempotent)."""
    await conn.execute(
        "INSERT INTO tenants (tenant_id, spec) VALUES ($1, $2)"
        " ON CONFLICT (tenant_id) DO UPDATE SET spec = EXCLUDED.spec, updated_at = now()"
        " WHERE tenants.spec IS DISTINCT FROM EXCLUDED.spec",
        tenant, spec.model_dump(mode="json", by_alias=True),
    )
    await conn.executemany(
        "INSERT INTO ledger_accounts (tenant_id, account_id, kind, currency)"
        " VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING",
        [(tenant, account, kind.value, spec.currency) for account, kind in SYSTEM_ACCOUNTS],
    )


async def get_tenant(conn: Connection, tenant: str) -> TenantSpec | None:
    spec = await conn.fetchval("SELECT spec FROM tenants WHERE tenant_id = $1", tenant)
    return None if spec is None else TenantSpec.model_validate(spec)


async def latest_revision(conn: Connection, tenant: str) -> StoredRevision | None:
    row = await conn.fetchrow(
        "SELECT revision, digest, published_at, body FROM catalog_revisions"
        " WHERE tenant_id = $1 ORDER BY revision DESC LIMIT 1", tenant)
    if row is None:
        return None
    return StoredRevision(row["revision"], row["digest"], row["published_at"],
                          CatalogSource.from_json(row["body"]))


async def all_revisions(conn: Connection, tenant: str,
                        after: int = 0) -> list[StoredRevision]:
    rows = await conn.fetch(
        "SELECT revision, digest, published_at, body FROM catalog_revisions"
        " WHERE tenant_id = $1 AND revision > $2 ORDER BY revision", tenant, after)
    return [StoredRevision(r["revision"], r["digest"], r["published_at"],
                           CatalogSource.from_json(r["body"])) for r in rows]


async def publish_revision(conn: Connection, tenant: str,
                           source: CatalogSource) -> tuple[int, bool]:
    """Store `source` as the next revision unless it equals the latest; return (revision, new).

    Locks the tenant row so concurrent publishers number revisions without gaps or clashes.
    The `catalog.published` event goes through the outbox in the same transaction.
    """
    await conn.execute("SELECT 1 FROM tenants WHERE tenant_id = $1 FOR UPDATE", tenant)
    digest = source.digest()
    latest = await conn.fetchrow(
        "SELECT revision, digest FROM catalog_revisions WHERE tenant_id = $1"
        " ORDER BY revision DESC LIMIT 1", tenant)
    if latest is not None and latest["digest"] == digest:
        return int(latest["revision"]), False
    revision = 1 if latest is None else int(latest["revision"]) + 1
    await conn.execute(
        "INSERT INTO catalog_revisions (tenant_id, revision, digest, body)"
        " VALUES ($1, $2, $3, $4)", tenant, revision, digest, source.to_json())
    await outbox.enqueue(conn, [DomainEvent.new(tenant, "catalog.published", {
        "revision": revision, "digest": digest,
        "offers": sorted(source.offers), "partners": sorted(source.partners)})])
    return revision, True
