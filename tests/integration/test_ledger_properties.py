"""Invariants 2 and 3 as properties: whatever sequence of top-ups, offline usage and online
reserve/commit/release hypothesis throws at a tenant, the ledger sums to zero, every balance is
the sum of its transfers, holds equal the open reservations and no prepaid balance is below 0."""

from __future__ import annotations

import asyncio
import json
import secrets
import uuid
from typing import Any

import asyncpg
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import Servers
from tests.factories import example_resources, usage_payload
from tests.integration.test_exactly_once import Delivered
from tollgate_core import customer_service
from tollgate_core.engines.catalog_cache import CatalogCache
from tollgate_core.engines.charging import ChargingEngine
from tollgate_core.engines.online import OnlineCharging, OnlinePolicy
from tollgate_core.local.apply import apply_resources
from tollgate_core.settings import ChargingSettings
from tollgate_core.store.db import Pool, create_pool

MIB = 1024**2
LINES = ["491600000001", "491600000002", "491600000003"]  # prepaid, prepaid, postpaid

operation = st.one_of(
    st.tuples(st.just("topup"), st.integers(0, 2), st.integers(1, 300)),
    st.tuples(st.just("usage"), st.integers(0, 2), st.integers(1, 3000)),
    st.tuples(st.just("reserve"), st.integers(0, 2), st.integers(1, 3000)),
    st.tuples(st.just("commit"), st.integers(0, 50), st.integers(0, 100)),
    st.tuples(st.just("release"), st.integers(0, 50), st.just(0)),
)


async def tenant_with_lines(pool: Pool, tenant: str) -> list[uuid.UUID]:
    """The example catalog (5 GiB plan, then 0.01 EUR/MiB); two prepaid lines with 1 EUR, one
    postpaid line."""
    report = await apply_resources(pool, example_resources(tenant))
    assert not report.errors
    customers = []
    for i, line in enumerate(LINES):
        customer = await customer_service.register_customer(
            pool, tenant, name=f"C{i}", email=f"c{i}@example.de",
            payment_type="prepaid" if i < 2 else "postpaid", customer_type="consumer",
            idempotency_key=f"r{i}")
        await customer_service.place_order(pool, tenant, customer_id=customer,
                                           offer="mobile-m", subscriber=line,
                                           idempotency_key=f"o{i}")
        if i < 2:
            await customer_service.top_up(pool, tenant, customer_id=customer, amount="1",
                                          idempotency_key=f"t{i}")
        customers.append(customer)
    return customers


async def run(servers: Servers, ops: list[tuple[str, int, int]]) -> None:
    tenant = f"p{secrets.token_hex(5)}"
    pool = await create_pool(servers.app_dsn, max_size=4)
    try:
        customers = await tenant_with_lines(pool, tenant)
        offline = ChargingEngine(ChargingSettings(tenant=tenant, database_url=servers.app_dsn,
                                                  nats_url=servers.nats_url), pool)
        online = OnlineCharging(tenant, pool, CatalogCache(tenant), OnlinePolicy())
        reservations: list[str] = []
        for n, (kind, who, amount) in enumerate(ops):
            await apply(kind, who, amount, n, tenant, pool, customers, offline, online,
                        reservations)
        await check(servers, tenant)
    finally:
        await pool.close()


async def apply(kind: str, who: int, amount: int, n: int, tenant: str, pool: Pool,
                customers: list[uuid.UUID], offline: ChargingEngine, online: OnlineCharging,
                reservations: list[str]) -> None:
    # Usage sizes are in units of 2 MiB, so 3,000 of them overrun the 5 GiB allowance.
    if kind == "topup":
        await customer_service.top_up(pool, tenant, customer_id=customers[who],
                                      amount=f"{amount / 100:.2f}", idempotency_key=f"k{n}")
    elif kind == "usage":
        payload = usage_payload(tenant, LINES[who], amount * 2 * MIB)[1]
        await offline.process([Delivered(f"tg.{tenant}.usage.data", payload)])
    elif kind == "reserve":
        answer = await online.handle("reserve", json.dumps({
            "sessionId": f"s{n}", "requestNumber": 0, "subscriber": LINES[who],
            "service": "data", "units": amount * 2 * MIB}).encode())
        if "reservationId" in answer:
            reservations.append(answer["reservationId"])
    elif reservations:
        reservation = reservations[who % len(reservations)]
        body: dict[str, Any] = {"reservationId": reservation}
        if kind == "commit":
            body["usedUnits"] = amount * 60 * MIB  # up to ~6 GiB: often more than granted
        await online.handle(kind, json.dumps(body).encode())


async def check(servers: Servers, tenant: str) -> None:
    conn = await asyncpg.connect(servers.owner_dsn)
    try:
        assert await conn.fetchval("SELECT coalesce(sum(balance_micros), 0) FROM"
                                   " ledger_accounts WHERE tenant_id = $1", tenant) == 0
        assert await conn.fetchval("""
            SELECT count(*) FROM ledger_accounts a WHERE a.tenant_id = $1 AND a.balance_micros
              <> coalesce((SELECT sum(amount_micros) FROM transfers t WHERE t.tenant_id = $1
                           AND t.credit_account = a.account_id), 0)
               - coalesce((SELECT sum(amount_micros) FROM transfers t WHERE t.tenant_id = $1
                           AND t.debit_account = a.account_id), 0)""", tenant) == 0
        assert await conn.fetchval(
            "SELECT count(*) FROM ledger_accounts WHERE tenant_id = $1 AND floor_micros IS NOT"
            " NULL AND (balance_micros < 0 OR balance_micros - pending_micros < 0)", tenant) == 0
        assert await conn.fetchval("""
            SELECT count(*) FROM ledger_accounts a WHERE a.tenant_id = $1 AND a.pending_micros
              <> coalesce((SELECT sum(pending_micros) FROM reservations r WHERE r.tenant_id = $1
                           AND r.state = 'pending'
                           AND 'customer:' || r.customer_id::text = a.account_id), 0)""",
                                   tenant) == 0
        held = await conn.fetchval("""
            SELECT coalesce(sum((u->>3)::bigint), 0) FROM reservations r,
              jsonb_array_elements(r.allowance_units) u
            WHERE r.tenant_id = $1 AND r.state = 'pending'""", tenant)
        reserved = await conn.fetchval("SELECT coalesce(sum(reserved), 0) FROM allowance_usage"
                                       " WHERE tenant_id = $1", tenant)
        assert held == reserved
    finally:
        await conn.close()


@settings(max_examples=25, deadline=None, suppress_health_check=[
    HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(ops=st.lists(operation, min_size=1, max_size=25))
def test_any_sequence_keeps_the_ledger_balanced(servers: Servers,
                                                ops: list[tuple[str, int, int]]) -> None:
    asyncio.run(run(servers, ops))
