"""Invariant 7 in the database: row-level security confines every transaction to its tenant."""

from __future__ import annotations

import asyncpg
import pytest

from tests.factories import install_example_catalog
from tollgate_core.store.db import Pool, tenant_tx


async def test_a_tenant_sees_and_changes_only_its_own_rows(pool: Pool, tenant_name: str) -> None:
    other = tenant_name + "b"
    await install_example_catalog(pool, tenant_name)
    await install_example_catalog(pool, other)
    async with tenant_tx(pool, tenant_name) as conn:
        tenants = await conn.fetch("SELECT tenant_id FROM tenants")
        revisions = await conn.fetch("SELECT DISTINCT tenant_id FROM catalog_revisions")
        updated = await conn.execute("UPDATE ledger_accounts SET balance_micros = 1"
                                     " WHERE tenant_id = $1", other)
    assert [r["tenant_id"] for r in tenants] == [tenant_name]
    assert [r["tenant_id"] for r in revisions] == [tenant_name]
    assert updated == "UPDATE 0"


async def test_writing_a_row_for_another_tenant_is_refused(pool: Pool, tenant_name: str) -> None:
    other = tenant_name + "b"
    await install_example_catalog(pool, tenant_name)
    await install_example_catalog(pool, other)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="row-level security"):
        async with tenant_tx(pool, tenant_name) as conn:
            await conn.execute(
                "INSERT INTO ledger_accounts (tenant_id, account_id, kind, currency)"
                " VALUES ($1, 'revenue:stolen', 'revenue', 'EUR')", other)


async def test_without_a_tenant_nothing_is_visible(pool: Pool, tenant_name: str) -> None:
    await install_example_catalog(pool, tenant_name)
    async with pool.acquire() as conn:
        assert await conn.fetchval("SELECT count(*) FROM tenants") == 0
        role = await conn.fetchrow("SELECT rolsuper, rolbypassrls FROM pg_roles"
                                   " WHERE rolname = current_user")
    assert role is not None
    assert (role["rolsuper"], role["rolbypassrls"]) == (False, False)
