"""Invariant 7 in the database: row-level security confines every transaction to its tenant."""

from __future__ import annotations

import asyncpg
import pytest

from tests.billing.test_bill_run import TZ, customers, period_for
from tests.conftest import Servers
from tests.factories import example_resources, install_example_catalog
from tests.running import Api
from tollgate_core.billing.run import bill_run
from tollgate_core.domain.billing import local_midnight
from tollgate_core.domain.care import api_key_digest
from tollgate_core.local.apply import apply_resources
from tollgate_core.store import partner_keys
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


async def test_every_tenant_table_forces_row_level_security(servers: Servers) -> None:
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        rows = await conn.fetch(
            "SELECT c.relname, c.relrowsecurity, c.relforcerowsecurity,"
            " pg_get_userbyid(c.relowner) AS owner FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = 'public' AND c.relkind = 'r' AND EXISTS (SELECT 1 FROM"
            " pg_attribute a WHERE a.attrelid = c.oid AND a.attname = 'tenant_id')")
    finally:
        await conn.close()
    tables = {r["relname"]: r for r in rows}
    assert {"consent_records", "orders", "erasures", "partner_api_keys"} <= set(tables)
    unguarded = [name for name, r in tables.items()
                 if not (r["relrowsecurity"] and r["relforcerowsecurity"])
                 or r["owner"] == "tollgate_app"]
    assert unguarded == []


async def test_a_partner_key_digest_shows_one_row_and_no_tenant_shows_another_tenants_keys(
        pool: Pool, tenant_name: str) -> None:
    other = tenant_name + "b"
    mine = (await apply_resources(pool, example_resources(tenant_name))).partner_keys
    theirs = (await apply_resources(pool, example_resources(other))).partner_keys
    key, their_key = mine[tenant_name]["streamflix"], theirs[other]["streamflix"]

    async with tenant_tx(pool, tenant_name) as conn:
        visible = await conn.fetch("SELECT tenant_id, key_digest FROM partner_api_keys")
        changed = await conn.execute("UPDATE partner_api_keys SET revoked_at = now()"
                                     " WHERE key_digest = $1", api_key_digest(their_key))
    assert [(r["tenant_id"], r["key_digest"]) for r in visible] == [
        (tenant_name, api_key_digest(key))]
    assert changed == "UPDATE 0"

    # Without a tenant, the digest of a key is what makes its one row visible (read-only).
    owner = await partner_keys.authenticate(pool, api_key_digest(their_key))
    assert owner == partner_keys.KeyOwner(other, "streamflix")
    assert await partner_keys.authenticate(pool, api_key_digest(key + "x")) is None
    async with pool.acquire() as lookup, lookup.transaction():
        await lookup.execute("SELECT set_config('tollgate.api_key_digest', $1, true)",
                             api_key_digest(key))
        rows = await lookup.fetch("SELECT tenant_id FROM partner_api_keys")
        revoked = await lookup.execute("UPDATE partner_api_keys SET revoked_at = now()")
    assert [r["tenant_id"] for r in rows] == [tenant_name]
    assert revoked == "UPDATE 0"


INVOICE = "query($id: UUID!) { invoice(id: $id) { id state } }"
CUSTOMER_INVOICES = ("query($id: UUID!) { customer(id: $id) { invoices { edges { node { id } } }"
                     " } }")
PAY = """mutation($id: UUID!, $key: String!) {
  recordPayment(customerId: $id, amount: "10.00", paymentReference: $key, idempotencyKey: $key)
  { __typename } }"""


async def test_another_tenants_credentials_see_and_pay_none_of_its_invoices(
        api: Api, pool: Pool, servers: Servers, tenant_name: str) -> None:
    """Invariant 7 for invoices over the API: tenant B's agent, admin, customer and partner,
    given tenant A's invoice and customer ids, see nothing and record no payment."""
    other = tenant_name + "b"
    for tenant in (tenant_name, other):
        await install_example_catalog(pool, tenant)
    period = await period_for(pool, tenant_name)
    ((customer_a, _),) = await customers(pool, tenant_name, 1,
                                         local_midnight(period.start, TZ))
    await customers(pool, other, 1, local_midnight(period.start, TZ))
    for tenant in (tenant_name, other):
        await bill_run(pool, tenant, period)

    async def a_state() -> list[tuple[object, ...]]:
        conn = await asyncpg.connect(servers.owner_dsn)
        try:
            rows = await conn.fetch(
                "SELECT invoice_id, state, paid_micros, (SELECT count(*) FROM payments p"
                " WHERE p.tenant_id = i.tenant_id) FROM invoices i WHERE tenant_id = $1",
                tenant_name)
        finally:
            await conn.close()
        return [tuple(r) for r in rows]

    before = await a_state()
    ((invoice_a, *_),) = before
    mine = await api.graphql(api.token(tenant_name), INVOICE, {"id": str(invoice_a)})
    assert mine["data"]["invoice"]["state"] == "ISSUED"  # visible in its own tenant

    b_agent = api.token(other)
    b_admin = api.token(other, subject="admin", roles=("admin",))
    b_customer = api.token(other, subject=str(customer_a), roles=("customer",))
    for token in (b_agent, b_admin, b_customer):
        seen = await api.graphql(token, INVOICE, {"id": str(invoice_a)})
        assert seen["data"] is None
        assert seen["errors"][0]["extensions"]["code"] == "NOT_FOUND", seen
        listed = await api.graphql(token, CUSTOMER_INVOICES, {"id": str(customer_a)})
        assert listed["data"] is None
        assert listed["errors"][0]["extensions"]["code"] == "NOT_FOUND", listed
    for token, refusal in ((b_agent, "NotFoundError"), (b_admin, "NotFoundError"),
                           (b_customer, "ForbiddenError")):
        paid = await api.graphql(token, PAY, {"id": str(customer_a), "key": f"x-{refusal}"})
        assert paid["data"]["recordPayment"]["__typename"] == refusal, paid
    me = await api.graphql(b_customer, "{ me { invoices { edges { node { id } } } } }")
    assert me["errors"][0]["extensions"]["code"] == "NOT_FOUND"
    b_partner = api.token(other, subject="partner:streamflix", roles=("partner",))
    partner = await api.graphql(b_partner, INVOICE, {"id": str(invoice_a)})
    assert partner["errors"][0]["extensions"]["code"] == "FORBIDDEN"

    # And in the database: B's transactions see none of A's documents or payments.
    async with tenant_tx(pool, other, readonly=True) as conn:
        visible = await conn.fetchrow(
            "SELECT (SELECT count(*) FROM invoices WHERE invoice_id = $1),"
            " (SELECT count(*) FROM invoice_lines WHERE invoice_id = $1),"
            " (SELECT count(*) FROM invoices WHERE customer_id = $2)",
            invoice_a, customer_a)
    assert visible is not None and tuple(visible) == (0, 0, 0)
    assert await a_state() == before
