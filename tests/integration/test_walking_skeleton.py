"""The thin end-to-end path: catalog → customer and order over GraphQL → usage on NATS →
charging engine → ledger → GraphQL answer naming the catalog revision."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import asyncpg

from tests.conftest import Servers
from tests.factories import install_example_catalog
from tests.running import Api, StartEngine, eventually
from tollgate_core.store.db import Pool

GIB = 1024**3
MSISDN = "491701234567"

REGISTER = """
mutation Register($input: RegisterCustomerInput!, $key: String!) {
  registerCustomer(input: $input, idempotencyKey: $key) {
    __typename
    ... on RegisterCustomerSuccess { customer { id } }
    ... on ValidationError { message field }
  }
}"""
ORDER = """
mutation Order($input: PlaceOrderInput!, $key: String!) {
  placeOrder(input: $input, idempotencyKey: $key) {
    __typename
    ... on PlaceOrderSuccess { subscriptionId }
    ... on ValidationError { message field }
    ... on NotFoundError { message field }
  }
}"""
DASHBOARD = """
query Dashboard($id: UUID!) {
  customer(id: $id) {
    balance { balance { amountMicros amount currency } }
    allowances { name quantity used remaining }
    usage(first: 20) {
      edges { node { quantity allowanceUnits chargeableUnits catalogRevision
                     charge { amountMicros } } }
    }
  }
}"""


async def register_and_order(api: Api, token: str, offer: str = "mobile-m",
                             msisdn: str = MSISDN) -> str:
    registered = await api.graphql(token, REGISTER, {
        "input": {"name": "Erika Mustermann", "email": "erika@example.de"}, "key": "reg-1"})
    customer_id: str = registered["data"]["registerCustomer"]["customer"]["id"]
    ordered = await api.graphql(token, ORDER, {
        "input": {"customerId": customer_id, "offerId": offer, "subscriber": msisdn},
        "key": "order-1"})
    assert ordered["data"]["placeOrder"]["__typename"] == "PlaceOrderSuccess", ordered
    return customer_id


def send_usage_cli(servers: Servers, tenant: str, count: int, quantity: int) -> None:
    """Publish through the real `tollgate usage send` command."""
    tollgate = Path(sys.executable).parent / "tollgate"
    result = subprocess.run(
        [str(tollgate), "usage", "send", "--tenant", tenant, "--subscriber", MSISDN,
         "--count", str(count), "--quantity", str(quantity), "--nats-url", servers.nats_url],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "TERM": "dumb"})
    assert result.returncode == 0, result.stderr
    assert f"published {count} usage events" in result.stderr


async def test_usage_is_rated_into_the_ledger_and_shown_over_graphql(
        api: Api, pool: Pool, servers: Servers, charging: StartEngine, tenant_name: str) -> None:
    revision = await install_example_catalog(pool, tenant_name)
    assert revision == 1
    token = api.token(tenant_name)
    customer_id = await register_and_order(api, token)
    await charging(tenant_name)

    # Six events of 1 GiB: five fill the 5 GiB allowance, the sixth is paid in tier 0:
    # 1,024 MiB × 0.01 EUR/MiB = 10.24 EUR = 10,240,000 micros, owed by the postpaid customer.
    await asyncio.to_thread(send_usage_cli, servers, tenant_name, 6, GIB)

    async def all_rated() -> bool:
        body = await api.graphql(token, DASHBOARD, {"id": customer_id})
        return len(body["data"]["customer"]["usage"]["edges"]) == 6

    await eventually(all_rated)
    body: dict[str, Any] = (await api.graphql(token, DASHBOARD, {"id": customer_id}))["data"]
    customer = body["customer"]
    assert customer["balance"]["balance"] == {"amountMicros": -10_240_000, "amount": "-10.24",
                                              "currency": "EUR"}
    assert customer["allowances"] == [{"name": "data-5gb", "quantity": 5 * GIB,
                                       "used": 5 * GIB, "remaining": 0}]
    records = [e["node"] for e in customer["usage"]["edges"]]
    assert {r["catalogRevision"] for r in records} == {1}
    assert sum(r["allowanceUnits"] for r in records) == 5 * GIB
    assert sum(r["charge"]["amountMicros"] for r in records) == 10_240_000

    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        # Invariant 2: per currency the ledger sums to zero, and every balance is the sum of
        # its transfers.
        total = await conn.fetchval(
            "SELECT sum(balance_micros) FROM ledger_accounts WHERE tenant_id = $1", tenant_name)
        mismatched = await conn.fetchval("""
            SELECT count(*) FROM ledger_accounts a WHERE a.tenant_id = $1 AND a.balance_micros <>
              coalesce((SELECT sum(amount_micros) FROM transfers t WHERE t.tenant_id = a.tenant_id
                        AND t.credit_account = a.account_id), 0)
            - coalesce((SELECT sum(amount_micros) FROM transfers t WHERE t.tenant_id = a.tenant_id
                        AND t.debit_account = a.account_id), 0)""", tenant_name)
    finally:
        await conn.close()
    assert total == 0
    assert mismatched == 0


async def test_a_new_revision_is_hot_loaded_by_a_running_engine(
        api: Api, pool: Pool, servers: Servers, charging: StartEngine, tenant_name: str) -> None:
    from tests.factories import example_resources
    from tollgate_core.local.apply import apply_resources
    from tollgate_core.resources import Offer

    await install_example_catalog(pool, tenant_name)
    token = api.token(tenant_name)
    customer_id = await register_and_order(api, token)
    await charging(tenant_name)

    # Revision 2 removes the allowance from the plan; the running engine must price with it.
    resources = example_resources(tenant_name)
    changed = [r.model_copy(update={"spec": r.spec.model_copy(update={
                   "allowances": [], "thresholds": []})})
               if isinstance(r, Offer) and r.metadata.name == "mobile-m" else r
               for r in resources]
    report = await apply_resources(pool, changed)
    assert report.revisions == {tenant_name: 2}
    # Applying the same content again publishes nothing new.
    assert (await apply_resources(pool, changed)).revisions == {tenant_name: 2}

    # 1 MiB at 0.01 EUR/MiB = 10,000 micros, all paid: revision 2 has no allowance.
    await asyncio.to_thread(send_usage_cli, servers, tenant_name, 1, 1024**2)

    async def rated() -> bool:
        body = await api.graphql(token, DASHBOARD, {"id": customer_id})
        return len(body["data"]["customer"]["usage"]["edges"]) == 1

    await eventually(rated)
    body = await api.graphql(token, DASHBOARD, {"id": customer_id})
    record = body["data"]["customer"]["usage"]["edges"][0]["node"]
    assert record["catalogRevision"] == 2
    assert record["charge"]["amountMicros"] == 10_000
